# SPDX-License-Identifier: BSD-3-Clause
# Thin wrappers around meson/ninja and the test scripts.
PREFIX ?= /usr/local
BUILD ?= build

.PHONY: all build demo check check-vm bench install fuzz-smoke deps clean soak

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

# Only the tests that run in the QEMU test guest (tests/functional/guest.py):
# logical and disk pools against a libvirtd in the guest, the kernel's NBD
# client, LUKS under dm-crypt.  They also run within check.
check-vm: build
	VDISK_BUILDDIR=$(abspath $(BUILD)) pytest-3 -q -rs -p no:cacheprovider \
	    tests/functional/test_pool_logical.py tests/functional/test_pool_disk.py \
	    tests/functional/test_nbd_kernel.py tests/functional/test_luks_guest.py

bench: deps
	$(MAKE) build
	VDISK_BUILDDIR=$(BUILD) ./bench/run

install: $(BUILD)/build.ninja
	meson configure $(BUILD) --prefix=$(PREFIX)
	ninja -C $(BUILD)
	meson install -C $(BUILD)

# The random backing-chain differential test over many fresh seeds:
# VDISK_SOAK seeds (default 300; 0 = no limit), VDISK_SOAK_MINUTES to stop
# after that long, VDISK_SOAK_JOBS at a time, failure reports in VDISK_SOAK_LOG.
soak: build
	VDISK_BUILDDIR=$(abspath $(BUILD)) VDISK_SOAK=$${VDISK_SOAK:-300} \
	    pytest-3 -q -p no:cacheprovider tests/functional/test_random_chain.py

fuzz-smoke: deps
	./scripts/fuzz-build build-fuzz
	./fuzz/run-smoke build-fuzz

clean:
	rm -rf $(BUILD) build-asan build-fuzz
