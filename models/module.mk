# models/: the llama2.c runner (stories260K) -> build/lib/libkvtc_model.a.
# `kvtc demo` links it, and libkvtc_bench carries the same object for the
# quality benchmark, bench/codec and the tests. Sources anywhere include it
# as "llama_model.h".
CPPFLAGS += -Imodels
MODEL_SRCS := models/llama_model.c
MODEL_OBJS := $(MODEL_SRCS:%.c=$(OBJ)/%.o)
MODEL_A := $(LIBDIR)/libkvtc_model.a
LIBS += $(MODEL_A)

$(MODEL_A): $(MODEL_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^
