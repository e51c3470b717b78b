# bench/transport: kvtcd vs ucx_perftest vs Redis on loopback.
#   make bench-transport   build, run bench/transport/run.py, write bench/results/transport.json
BT_SRCS := bench/transport/bench_transport.c bench/transport/bt_util.c \
           bench/transport/bt_redis.c bench/transport/bt_kvtc.c
BT_OBJS := $(BT_SRCS:%.c=$(OBJ)/%.o)
BT_BIN  := $(BINDIR)/kvtc_bench_transport
BENCHES += $(BT_BIN)

$(BT_BIN): $(BT_OBJS) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(BT_OBJS) $(CODEC_A) -lhiredis

.PHONY: bench-transport
bench-transport: $(BT_BIN) $(BINS)
	python3 bench/transport/run.py --build $(BUILD)
