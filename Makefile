# SPDX-License-Identifier: BSD-3-Clause
# Thin wrappers around meson/ninja and the test scripts.
PREFIX ?= /usr/local
BUILD ?= build

.PHONY: all build demo check bench install fuzz-smoke deps clean

all: build

deps:
	./scripts/install-deps

$(BUILD)/build.ninja:
	meson setup $(BUILD) --prefix=$(PREFIX)

build: $(BUILD)/build.ninja
	ninja -C $(BUILD)

demo: deps
	$(MAKE) build
	./scripts/demo $(BUILD)

check: deps
	./scripts/check

bench: deps
	$(MAKE) build
	VDISK_BUILDDIR=$(BUILD) ./bench/run

install: $(BUILD)/build.ninja
	meson configure $(BUILD) --prefix=$(PREFIX)
	ninja -C $(BUILD)
	meson install -C $(BUILD)

fuzz-smoke: deps
	./scripts/fuzz-build build-fuzz
	./fuzz/run-smoke build-fuzz

clean:
	rm -rf $(BUILD) build-asan build-fuzz
