# bench/tiers: kvtc-bench-tiers, the disk tier next to fio and the index's
# memory, lookup latency and rebuild time (bench/tiers/README.md).
#   make bench-tiers         full run (minutes, ~5 GiB of scratch files), writes
#                            bench/results/tiers.json
#   make bench-tiers-quick   smoke run (seconds), writes nothing under bench/results
BTI_SRCS := bench/tiers/bench_tiers.c bench/tiers/bti_disk.c bench/tiers/bti_fio.c \
            bench/tiers/bti_index.c bench/tiers/bti_util.c
BTI_OBJS := $(BTI_SRCS:%.c=$(OBJ)/%.o)
BTI_BIN  := $(BINDIR)/kvtc-bench-tiers
BENCHES += $(BTI_BIN)
BENCH_TIERS_ARGS ?=

# The daemon's own store and index (private headers).
$(BTI_OBJS): CPPFLAGS += -Idaemon
$(BTI_OBJS): | $(WIRE_GEN_H)

$(BTI_BIN): $(BTI_OBJS) $(KVTCD_A) $(WIRE_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(BTI_OBJS) $(KVTCD_A) $(WIRE_A) $(CODEC_A) \
	    $(KVTCD_LDLIBS) $(CODEC_LDLIBS)

.PHONY: bench-tiers bench-tiers-quick
bench-tiers: $(BTI_BIN)
	@mkdir -p bench/results
	$(BTI_BIN) $(BENCH_TIERS_ARGS)

bench-tiers-quick: $(BTI_BIN)
	$(BTI_BIN) --quick $(BENCH_TIERS_ARGS)
