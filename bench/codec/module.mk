# bench/codec: kvtc-bench-codec, CPU encode/decode throughput next to the
# BLAS sgemm rate of the same projections.
#   make bench-codec   build, run, print the table, write bench/results/codec-cpu.json
BC_SRCS := bench/codec/bench_codec.c bench/codec/bc_data.c
BC_OBJS := $(BC_SRCS:%.c=$(OBJ)/%.o)
BC_BIN  := $(BINDIR)/kvtc-bench-codec
BENCHES += $(BC_BIN)
BENCH_CODEC_ARGS ?=

# The stories260K runner (libkvtc_bench.a) supplies real KV for that layout.
$(BC_BIN): $(BC_OBJS) $(BENCHQ_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(BC_OBJS) $(BENCHQ_A) $(CODEC_A) $(CODEC_LDLIBS)

.PHONY: bench-codec
bench-codec: $(BC_BIN)
	@mkdir -p bench/results
	$(BC_BIN) $(BENCH_CODEC_ARGS)
