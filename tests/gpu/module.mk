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
