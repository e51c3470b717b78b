# tests/python: the Python binding's tests (client/python/kvtc) against a real
# kvtcd. `make test` runs them as a prerequisite, so its last line stays the
# Criterion synthesis; `make test-python` runs them alone.
#   KVTC_TEST_PYTHON  interpreter (default /usr/bin/python3 with Debian's
#                     python3-numpy); .venv/bin/python adds the torch and
#                     transformers tests, which otherwise skip with a message.
KVTC_TEST_PYTHON ?= /usr/bin/python3
PY_TEST_ENV := KVTC_BUILD=$(abspath $(BUILD))
ifeq ($(SAN),1)
# libkvtc.so is built with ASan, whose runtime must be the first library of
# the process; Python itself is not instrumented and "leaks" at exit by design.
PY_TEST_ENV += LD_PRELOAD=$(shell $(CC) -print-file-name=libasan.so) ASAN_OPTIONS=detect_leaks=0
endif

.PHONY: test-python
test-python: all
	$(PY_TEST_ENV) $(KVTC_TEST_PYTHON) tests/python/run.py

test: test-python
