# bench/transport: kvtcd vs ucx_perftest vs Redis on loopback.
#   make bench-transport   build, run bench/transport/run.py, write bench/results/transport.json
BT_SRCS := bench/transport/bench_transport.c bench/transport/bt_util.c bench/transport/bt_redis.c \
           bench/transport/bt_memcpy.c
ifdef CLIENT_A
BT_SRCS += bench/transport/bt_kvtc.c
BT_LIBS := $(CLIENT_A) $(CODEC_A)
BT_LDLIBS := $(CLIENT_LDLIBS)
else
BT_SRCS += bench/transport/bt_kvtc_none.c
BT_LIBS := $(CODEC_A)
BT_LDLIBS :=
endif
BT_OBJS := $(BT_SRCS:%.c=$(OBJ)/%.o)
BT_BIN  := $(BINDIR)/kvtc_bench_transport
BENCHES += $(BT_BIN)

$(BT_OBJS): | $(WIRE_GEN_H)

$(BT_BIN): $(BT_OBJS) $(BT_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(BT_OBJS) $(BT_LIBS) $(BT_LDLIBS) -lhiredis $(CODEC_LDLIBS)

.PHONY: bench-transport
bench-transport: $(BT_BIN) $(BINDIR)/kvtcd
	python3 bench/transport/run.py --build $(BUILD)

# kvtc_bench_cma: whether process_vm_writev/readv into one process scales
# with the threads doing it (the local path's copy workers).
BT_CMA_BIN := $(BINDIR)/kvtc_bench_cma
BENCHES += $(BT_CMA_BIN)
$(BT_CMA_BIN): $(OBJ)/bench/transport/cma_scale.o
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< -lxxhash

# kvtc_bench_conns: one client thread, several connections (to several
# daemons or one): whose thread bounds a tcp stream.
ifdef CLIENT_A
BT_CONNS_BIN := $(BINDIR)/kvtc_bench_conns
BENCHES += $(BT_CONNS_BIN)
$(OBJ)/bench/transport/conns_one_thread.o: | $(WIRE_GEN_H)
$(BT_CONNS_BIN): $(OBJ)/bench/transport/conns_one_thread.o $(CLIENT_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(CLIENT_A) $(CODEC_A) $(CLIENT_LDLIBS) $(CODEC_LDLIBS)
endif
