# tests/: every Criterion test of tests/unit and tests/integration links into
# one binary, build/tests/kvtc_tests. Modules append their libraries to
# TEST_LDLIBS / TEST_DEPS; test sources find shared files through the
# KVTC_SHARED and KVTC_BUILD environment variables that `make test` sets.
CPPFLAGS += -Itests
TEST_SRCS += $(wildcard tests/unit/*.c tests/integration/*.c) tests/test_util.c
TEST_DEPS += $(CODEC_A)
TEST_LDLIBS += $(CODEC_A)
