# bench/quality: the baseline quantizers plus the stories260K runner of
# models/ (libkvtc_bench.{a,so}; the .so serves the Python harness through
# ctypes, which needs only the kvtc_bl_* symbols),
# kvtc-quality, and `make bench-quality` (JSON + PNG in bench/results/).
BENCHQ_SRCS := bench/quality/baselines.c bench/quality/projx.c
BENCHQ_OBJS := $(BENCHQ_SRCS:%.c=$(OBJ)/%.o) $(MODEL_OBJS)
BENCHQ_A  := $(LIBDIR)/libkvtc_bench.a
BENCHQ_SO := $(LIBDIR)/libkvtc_bench.so
LIBS += $(BENCHQ_A) $(BENCHQ_SO)
# projx.c (the projection-format experiment) mirrors the codec's encode and
# decode, so it builds on the codec's private headers.
$(OBJ)/bench/quality/projx.o: CPPFLAGS += -Icodec

$(BENCHQ_A): $(BENCHQ_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^
$(BENCHQ_SO): $(BENCHQ_OBJS) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS) -o $@ $(BENCHQ_OBJS) $(CODEC_A) $(CODEC_LDLIBS)

# The codec archive again after ours: static archives resolve left to right.
TEST_DEPS += $(BENCHQ_A)
TEST_LDLIBS += $(BENCHQ_A) $(CODEC_A)

# kvtc-quality: the quality table of kvtc vs the baselines (build/bin).
KVTCQ_OBJ := $(OBJ)/bench/quality/kvtc_quality.o
KVTCQ_BIN := $(BINDIR)/kvtc-quality
BINS += $(KVTCQ_BIN)
BENCHES += $(KVTCQ_BIN)

$(KVTCQ_BIN): $(KVTCQ_OBJ) $(BENCHQ_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(KVTCQ_OBJ) $(BENCHQ_A) $(CODEC_A) $(CODEC_LDLIBS)

# Writes bench/results/quality-stories260K.{json,png}; a few minutes on 2 cores.
.PHONY: bench-quality
bench-quality: $(KVTCQ_BIN)
	KVTC_QUALITY=$(KVTCQ_BIN) KVTC_SHARED=$(abspath ../shared) bench/quality/run-stories.sh

# kvtc-dump-kv: a sampled sequence's real KV as a canonical chunk file
# (used by deploy/quickstart.sh and handy with `kvtc codec`).
DUMPKV_OBJ := $(OBJ)/bench/quality/dump_kv.o
DUMPKV_BIN := $(BINDIR)/kvtc-dump-kv
BINS += $(DUMPKV_BIN)

$(DUMPKV_BIN): $(DUMPKV_OBJ) $(BENCHQ_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(DUMPKV_OBJ) $(BENCHQ_A) $(CODEC_A) $(CODEC_LDLIBS)

# Issue #3's projection cost options on stories260K: the codec with its
# projection GEMMs in bf16/fp8 (projx.c) and layer-grouped PCAs, at 8x and
# 16x; writes bench/results/projx-stories260K.json (about a minute).
.PHONY: bench-projx
bench-projx: $(KVTCQ_BIN)
	$(KVTCQ_BIN) --model $(abspath ../shared)/models/stories260K.bin --sens --projx \
	  --out bench/results/projx-stories260K.json
