# kvtc - top-level Makefile.
#   make            build libraries, binaries and tests (CUDA parts when nvcc is present)
#   make test       build and run the tests (fuzzers for a bounded time, then Criterion)
#   make bench      build the benchmarks
#   make install    PREFIX=/usr/local DESTDIR=
#   make SAN=1 ...  ASan + UBSan build (in build-san/)
# Each directory adds its own targets through a module.mk included below.

PREFIX  ?= /usr/local
DESTDIR ?=
SAN     ?= 0
BUILD   ?= $(if $(filter 1,$(SAN)),build-san,build)
CC      ?= cc
NVCC    ?= $(shell command -v nvcc 2>/dev/null)
FUZZ_SECONDS ?= 20
TEST_JOBS ?= 2
VERSION := 0.1.0

CPPFLAGS += -Iinclude -Icommon -I$(BUILD)/gen -D_GNU_SOURCE -DKVTC_VERSION='"$(VERSION)"'
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -fPIC -Wall -Wextra -Werror -Wno-unused-parameter -pthread
LDFLAGS  += -pthread
ifeq ($(SAN),1)
CFLAGS  += -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS += -fsanitize=address,undefined
endif

CODEC_LDLIBS := -ldeflate -lz -lzstd -lxxhash -llapacke -lopenblas -lm

OBJ := $(BUILD)/obj
LIBDIR := $(BUILD)/lib
BINDIR := $(BUILD)/bin
TESTDIR := $(BUILD)/tests

# Filled in by module.mk files.
LIBS :=
BINS :=
TEST_SRCS :=
TEST_LDLIBS :=
TEST_DEPS :=
BENCHES :=
FUZZERS :=
HEADERS := $(wildcard include/*.h)

.PHONY: all test bench install clean fuzz
all:

# Order matters: a module may name the libraries of those before it.
MODULE_ORDER := common codec models kernels proto client daemon client/cli tests tests/fuzz \
                bench/quality bench/quality/hf bench/transport bench/tiers bench/gpu bench/e2e
MODULE_FILES := $(wildcard $(MODULE_ORDER:%=%/module.mk))
include $(MODULE_FILES)
include $(filter-out $(MODULE_FILES),$(sort $(wildcard */module.mk */*/module.mk)))

all: $(LIBS) $(BINS) $(TESTDIR)/kvtc_tests
bench: $(BENCHES)

$(OBJ)/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

-include $(shell find $(OBJ) -name '*.d' 2>/dev/null)

# One Criterion binary holds every test, so `make test` ends on one synthesis line.
TEST_OBJS := $(TEST_SRCS:%.c=$(OBJ)/%.o)
$(TESTDIR)/kvtc_tests: $(TEST_OBJS) $(TEST_DEPS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(TEST_OBJS) $(TEST_LDLIBS) -lcriterion $(CODEC_LDLIBS)

# Under SAN=1, Criterion's own runner (libcriterion.so.3) leaks 48 bytes after
# some runs of the suites that spawn daemons; LeakSanitizer still prints the
# report, but it must not turn 106 passing tests into a failed build. Leaks
# in test processes are reported by those processes and never failed a test.
TEST_LSAN := $(if $(filter 1,$(SAN)),LSAN_OPTIONS=exitcode=0)

# The benchmarks are compiled (not run) by `test` too, so a change that
# breaks one fails here rather than on the next measuring machine.
test: all $(FUZZERS) $(BENCHES)
	@for f in $(FUZZERS); do \
	  echo "fuzz: $$f for $(FUZZ_SECONDS)s"; \
	  $$f -max_total_time=$(FUZZ_SECONDS) -rss_limit_mb=2048 -print_final_stats=0 \
	      -artifact_prefix=$(BUILD)/$$(basename $$f)- \
	      $(BUILD)/fuzz-corpus/$$(basename $$f) 2>$(BUILD)/$$(basename $$f).log \
	  || { tail -n 40 $(BUILD)/$$(basename $$f).log; exit 1; }; \
	done
	KVTC_SHARED=$(abspath ../shared) KVTC_BUILD=$(abspath $(BUILD)) $(TEST_LSAN) \
	  $(TESTDIR)/kvtc_tests --jobs=$(TEST_JOBS)

# Only the public pieces install: internal archives, tools and tests stay.
INSTALL_LIBS = $(filter %/libkvtc.a %/libkvtc.so %/libkvtc_codec.a %/libkvtc_codec.so \
                        %/libkvtc_gpu.a %/libkvtc_gpu.so,$(LIBS))
INSTALL_BINS = $(filter %/kvtcd %/kvtc,$(BINS))
install: all kvtc.pc
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig $(DESTDIR)$(PREFIX)/bin
	install -m 644 $(HEADERS) $(DESTDIR)$(PREFIX)/include/
	install -m 644 $(filter %.a,$(INSTALL_LIBS)) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(filter %.so,$(INSTALL_LIBS)) $(DESTDIR)$(PREFIX)/lib/
	install -m 755 $(INSTALL_BINS) $(DESTDIR)$(PREFIX)/bin/
	install -m 644 $(BUILD)/kvtc.pc $(DESTDIR)$(PREFIX)/lib/pkgconfig/kvtc.pc

kvtc.pc: $(BUILD)/kvtc.pc
$(BUILD)/kvtc.pc: deploy/kvtc.pc.in Makefile
	@mkdir -p $(dir $@)
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' $< > $@

clean:
	rm -rf build build-san
