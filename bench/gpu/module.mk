# bench/gpu: kvtc-bench-gpu, the GPU codec on a Llama-3.1-8B layout next to
# the cuBLAS GEMM of the same projections and the device copy bandwidth.
#   make bench-gpu   build, run (needs a GPU), write bench/results/gpu.json
ifneq ($(GPU_READY),)
BG_OBJS := $(OBJ)/bench/gpu/bench_gpu.o $(OBJ)/bench/codec/bc_data.o
BG_BIN  := $(BINDIR)/kvtc-bench-gpu
BENCHES += $(BG_BIN)
$(OBJ)/bench/gpu/bench_gpu.o: CPPFLAGS += -I$(CUDA_HOME)/include

$(BG_BIN): $(BG_OBJS) $(GPU_A) $(CODEC_A) $(LIBDIR)/libkvtc_bench.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(BG_OBJS) $(GPU_A) $(LIBDIR)/libkvtc_bench.a $(CODEC_A) \
	    $(GPU_LDLIBS) $(CODEC_LDLIBS)

.PHONY: bench-gpu
bench-gpu: $(BG_BIN)
	@mkdir -p bench/results
	$(GPU_RUNENV) $(BG_BIN) $(BENCH_GPU_ARGS)
else
.PHONY: bench-gpu
bench-gpu:
	@echo "bench-gpu: needs nvcc and nvCOMP (deploy/fetch-nvcomp.sh)"
endif

# kvtc-bench-gpu-tier: the GPU tier's copies (daemon/store_gpu.c) next to
# plain driver copies on the same device. Built with or without nvcc: the
# driver is dlopen'ed at run time, as kvtcd does.
#   make bench-gpu-tier   build and run (needs a GPU; exit 77 without)
BGT_BIN := $(BINDIR)/kvtc-bench-gpu-tier
BENCHES += $(BGT_BIN)
$(OBJ)/bench/gpu/tier_copy.o: CPPFLAGS += -Idaemon

$(BGT_BIN): $(OBJ)/bench/gpu/tier_copy.o $(KVTCD_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(KVTCD_A) $(CODEC_A) $(KVTCD_LDLIBS) $(CODEC_LDLIBS)

.PHONY: bench-gpu-tier
bench-gpu-tier: $(BGT_BIN)
	$(BGT_BIN) $(BENCH_GPU_TIER_ARGS)
