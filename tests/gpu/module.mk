# tests/gpu/: programs of other modules that need a GPU machine and their
# own main (the Criterion GPU tests are kernels/module.mk's).
# client_gpu_decode: want=KVTC gets into device buffers decoded on the GPU
# by libkvtc (issue #6) and the fallback to the CPU; needs libkvtc_gpu for
# the reference decode, so it is built with it (after kernels/module.mk).
ifneq ($(GPU_READY),)
CLIENT_GPU_DECODE_CHECK := $(BUILD)/tests/gpu/client_gpu_decode
BINS += $(CLIENT_GPU_DECODE_CHECK)
$(OBJ)/tests/gpu/client_gpu_decode.o: CPPFLAGS += -I$(CLIENT_CUDA_HOME)/include
$(CLIENT_GPU_DECODE_CHECK): $(OBJ)/tests/gpu/client_gpu_decode.o $(CLIENT_A) $(CODEC_A) $(GPU_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(GPU_A) $(CLIENT_A) $(CLIENT_LDLIBS) $(GPU_LDLIBS)
endif

# The real Hugging Face KV of gpu_codec::cross_paths_real_smollm2_kv
# (tests/gpu/hf_kv_fixture.py, ~11 MB, never committed): made on request,
# since it needs bench/quality/hf's virtualenv (torch, transformers):
#   make gpu-hf-fixture      -> $(BUILD)/tests/gpu/smollm2-kv.bin
# The test reads $KVTC_BUILD/tests/gpu/smollm2-kv.bin (or $KVTC_TEST_HF_KV).
GPU_HF_FIXTURE := $(BUILD)/tests/gpu/smollm2-kv.bin
.PHONY: gpu-hf-fixture
gpu-hf-fixture: bench-hf-setup
	@mkdir -p $(dir $(GPU_HF_FIXTURE))
	$(HF_PY) tests/gpu/hf_kv_fixture.py $(GPU_HF_FIXTURE)
