# client/: libkvtc, the client library -> build/lib/libkvtc.{a,so}
#   CLIENT_A, CLIENT_SO  the libraries (the wire framing and the key
#                        hashing are inside both; the .so also carries the
#                        codec objects it uses)
#   CLIENT_LDLIBS        what a binary linking CLIENT_A also needs (the
#                        codec library for layout checks, UCX, ...)
# With nvcc on PATH, client/cuda.c is built against the CUDA runtime so
# device buffers are detected and staged; without it they are refused.
CLIENT_SRCS := $(wildcard client/*.c) common/keys.c common/errors.c
CLIENT_OBJS := $(CLIENT_SRCS:%.c=$(OBJ)/%.o) $(WIRE_OBJS)
CLIENT_A := $(LIBDIR)/libkvtc.a
CLIENT_SO := $(LIBDIR)/libkvtc.so
CLIENT_LDLIBS := $(CODEC_A) -lucp -lucs $(WIRE_LDLIBS) -lcrypto $(CODEC_LDLIBS)
LIBS += $(CLIENT_A) $(CLIENT_SO)

ifneq ($(NVCC),)
CLIENT_CUDA_HOME ?= $(patsubst %/bin/,%,$(dir $(NVCC)))
$(OBJ)/client/cuda.o: CPPFLAGS += -DKVTC_HAVE_CUDA -I$(CLIENT_CUDA_HOME)/include
# The GPU decode of get containers (gpu_decode.c) dlopens libkvtc_gpu.so:
# only the CUDA runtime is linked.
$(OBJ)/client/gpu_decode.o: CPPFLAGS += -DKVTC_HAVE_CUDA -I$(CLIENT_CUDA_HOME)/include
CLIENT_LDLIBS += -L$(CLIENT_CUDA_HOME)/lib64 -Wl,-rpath,$(CLIENT_CUDA_HOME)/lib64 -lcudart
endif

# Client objects include the generated protobuf header.
$(CLIENT_SRCS:%.c=$(OBJ)/%.o): | $(WIRE_GEN_H)

$(CLIENT_A): $(CLIENT_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	$(AR) rcs $@ $^
$(CLIENT_SO): $(CLIENT_OBJS) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS) -Wl,-soname,libkvtc.so -Wl,--no-undefined -o $@ $(CLIENT_OBJS) $(CLIENT_LDLIBS)

TEST_DEPS += $(CLIENT_A) $(CODEC_A)
TEST_LDLIBS += $(CLIENT_A) $(CLIENT_LDLIBS)

# tests/gpu/client_cuda: the device-buffer check, run on a GPU machine.
ifneq ($(NVCC),)
CLIENT_GPU_CHECK := $(BUILD)/tests/gpu/client_cuda
BINS += $(CLIENT_GPU_CHECK)
$(OBJ)/tests/gpu/client_cuda.o: CPPFLAGS += -I$(CLIENT_CUDA_HOME)/include
$(CLIENT_GPU_CHECK): $(OBJ)/tests/gpu/client_cuda.o $(CLIENT_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(CLIENT_A) $(CLIENT_LDLIBS)
endif

