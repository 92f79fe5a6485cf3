/* SPDX-License-Identifier: BSD-3-Clause */
/* Minimal assertion helpers for unit tests: a failed check prints where and
 * makes the test exit nonzero at the end. */
#ifndef VD_TEST_TAP_H
#define VD_TEST_TAP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int tap_failures;
static int tap_checks;

#define CHECK(cond) do { tap_checks++; if (!(cond)) { tap_failures++; \
    fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); } } while (0)
#define CHECK_EQ_INT(a, b) do { long long _a = (long long)(a), _b = (long long)(b); \
    tap_checks++; if (_a != _b) { tap_failures++; \
    fprintf(stderr, "%s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, _a, _b); } } while (0)
#define CHECK_EQ_STR(a, b) do { const char *_a = (a), *_b = (b); tap_checks++; \
    if (!_a || !_b || strcmp(_a, _b)) { tap_failures++; \
    fprintf(stderr, "%s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a, \
            _a ? _a : "(null)", _b ? _b : "(null)"); } } while (0)
#define TAP_DONE() (printf("%d checks, %d failed\n", tap_checks, tap_failures), \
    tap_failures ? EXIT_FAILURE : EXIT_SUCCESS)

#endif
