# kernels/: the codec on the GPU -> libkvtc_gpu.{a,so}, tests/gpu ->
# build/tests/kvtc_gpu_tests (make test-gpu). Built only when nvcc is found
# ($(NVCC)) and nvCOMP is unpacked in NVCOMP_DIR (deploy/fetch-nvcomp.sh);
# otherwise nothing here is built and the CPU codec serves alone.
NVCOMP_DIR ?= .deps/nvcomp
CUDA_HOME  ?= $(patsubst %/bin/nvcc,%,$(NVCC))
GPU_READY  := $(and $(NVCC),$(wildcard $(NVCOMP_DIR)/lib/libnvcomp.so.6))

ifneq ($(GPU_READY),)
NVCCFLAGS ?= -O3 -g -lineinfo
NVCCFLAGS += -std=c++17 -gencode=arch=compute_90,code=sm_90 -Xcompiler -fPIC \
             -Xcompiler -Wall,-Wextra,-Wno-unused-parameter -Werror all-warnings
GPU_CPPFLAGS := -Iinclude -I$(NVCOMP_DIR)/include -D_GNU_SOURCE
GPU_SRCS := $(wildcard kernels/*.cu)
GPU_OBJS := $(GPU_SRCS:%.cu=$(OBJ)/%.o)
GPU_A  := $(LIBDIR)/libkvtc_gpu.a
GPU_SO := $(LIBDIR)/libkvtc_gpu.so
GPU_LDLIBS := -L$(CUDA_HOME)/lib64 -L$(NVCOMP_DIR)/lib -l:libnvcomp.so.6 -lcusolver -lcublasLt -lcublas \
              -lcudart -lstdc++ -Wl,-rpath,$(abspath $(NVCOMP_DIR)/lib)
GPU_RUNENV := LD_LIBRARY_PATH=$(abspath $(NVCOMP_DIR)/lib):$(CUDA_HOME)/lib64$${LD_LIBRARY_PATH:+:$$LD_LIBRARY_PATH}
LIBS += $(GPU_A) $(GPU_SO)

$(OBJ)/kernels/%.o: kernels/%.cu $(wildcard kernels/*.h kernels/*.cuh) $(HEADERS) codec/internal.h codec/container.h
	@mkdir -p $(dir $@)
	$(NVCC) $(GPU_CPPFLAGS) $(NVCCFLAGS) -c $< -o $@

$(GPU_A): $(GPU_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^
$(GPU_SO): $(GPU_OBJS) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS) -o $@ $(GPU_OBJS) $(CODEC_A) $(GPU_LDLIBS) $(CODEC_LDLIBS)

# GPU tests: their own Criterion binary (every test skips without a GPU).
# (tests/gpu also holds programs of other modules with their own main.)
GPU_TEST_SRCS := $(wildcard tests/gpu/test_gpu_*.c) tests/gpu/gpu_test_util.c tests/test_util.c
GPU_TEST_OBJS := $(GPU_TEST_SRCS:%.c=$(OBJ)/%.o)
GPU_TEST_BIN := $(TESTDIR)/kvtc_gpu_tests
$(GPU_TEST_OBJS): CPPFLAGS += -I$(CUDA_HOME)/include -Itests -Ibench/quality

$(GPU_TEST_BIN): $(GPU_TEST_OBJS) $(GPU_A) $(CODEC_A) $(LIBDIR)/libkvtc_bench.a
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(GPU_TEST_OBJS) $(GPU_A) $(LIBDIR)/libkvtc_bench.a $(CODEC_A) -lcriterion \
	    $(GPU_LDLIBS) $(CODEC_LDLIBS)
all: $(GPU_TEST_BIN)

.PHONY: test-gpu
test-gpu: $(GPU_TEST_BIN)
	$(GPU_RUNENV) KVTC_SHARED=$(abspath ../shared) KVTC_BUILD=$(abspath $(BUILD)) \
	  $(GPU_TEST_BIN) --jobs=1 --verbose
# make test runs the GPU tests first (skipped without a GPU), so the main
# binary's synthesis stays the last line.
test: test-gpu
else
.PHONY: test-gpu
test-gpu:
	@echo "test-gpu: skipped (needs nvcc and nvCOMP: deploy/fetch-nvcomp.sh)"
endif
