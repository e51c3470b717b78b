# tests/fuzz/: libFuzzer targets for the container decoder (fuzz_decode) and
# the profile loader (fuzz_profile), and make_corpus, which writes their seed
# corpora to $(BUILD)/fuzz-corpus/<fuzzer>/ before `make test` runs them.
# libFuzzer needs clang; gcc objects cannot carry its coverage hooks, so the
# codec sources are compiled a second time, with clang, into $(OBJ)/fuzz/.
# Without clang (or its fuzzer runtime, libclang-rt-14-dev) the fuzzers are
# skipped with a warning and `make test` runs the Criterion tests alone.

# The corruption tests share the synthetic data and profile of the fuzzers.
TEST_SRCS += tests/fuzz/synth.c

ifndef FUZZ_CC
FUZZ_CC := $(shell command -v clang-14 2>/dev/null || command -v clang 2>/dev/null)
endif
FUZZ_RT := $(if $(FUZZ_CC),$(wildcard $(shell $(FUZZ_CC) -print-runtime-dir 2>/dev/null)/libclang_rt.fuzzer-x86_64.a))

ifeq ($(FUZZ_RT),)
$(warning tests/fuzz: clang with libFuzzer not found (deploy/install-deps.sh installs clang and libclang-rt-14-dev); fuzzers skipped)
else
FUZZ_OBJ := $(OBJ)/fuzz
FUZZ_DIR := $(BUILD)/fuzz
FUZZ_CORPUS := $(BUILD)/fuzz-corpus
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
# The codec is compiled without -Werror here: a warning that only clang
# emits in someone else's file must not break every `make test`; gcc's
# -Werror build of the same sources stays the gate.
FUZZ_CFLAGS := -std=c11 -O1 -g -pthread -Wall -Wextra -Wno-unused-parameter \
               -fsanitize=fuzzer-no-link $(FUZZ_SAN)
FUZZ_CODEC_OBJS := $(CODEC_SRCS:%.c=$(FUZZ_OBJ)/%.o)
FUZZ_OWN_SRCS := tests/fuzz/synth.c tests/fuzz/fuzz_decode.c \
                 tests/fuzz/fuzz_profile.c tests/fuzz/make_corpus.c
FUZZ_OWN_OBJS := $(FUZZ_OWN_SRCS:%.c=$(FUZZ_OBJ)/%.o)
FUZZ_BINS := $(FUZZ_DIR)/fuzz_decode $(FUZZ_DIR)/fuzz_profile
FUZZERS += $(FUZZ_BINS)

$(FUZZ_CODEC_OBJS): $(FUZZ_OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) $(FUZZ_CFLAGS) -MMD -MP -c $< -o $@

$(FUZZ_OWN_OBJS): $(FUZZ_OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(CPPFLAGS) -Itests/fuzz $(FUZZ_CFLAGS) -Werror -MMD -MP -c $< -o $@

$(FUZZ_BINS): $(FUZZ_DIR)/%: $(FUZZ_OBJ)/tests/fuzz/%.o $(FUZZ_OBJ)/tests/fuzz/synth.o $(FUZZ_CODEC_OBJS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -fsanitize=fuzzer $(FUZZ_SAN) -pthread -o $@ $^ $(CODEC_LDLIBS)

# The generator links the fuzzers' codec objects (not libkvtc_codec.a) so
# the profile it calibrates is bit-for-bit the one the fuzzers build.
$(FUZZ_DIR)/make_corpus: $(FUZZ_OBJ)/tests/fuzz/make_corpus.o $(FUZZ_OBJ)/tests/fuzz/synth.o $(FUZZ_CODEC_OBJS)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) -fsanitize=fuzzer-no-link $(FUZZ_SAN) -pthread -o $@ $^ $(CODEC_LDLIBS)

$(FUZZ_CORPUS)/.stamp: $(FUZZ_DIR)/make_corpus
	$< $(FUZZ_CORPUS)
	@touch $@

test: $(FUZZ_CORPUS)/.stamp
fuzz: $(FUZZ_BINS) $(FUZZ_CORPUS)/.stamp
endif
