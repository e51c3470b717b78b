# codec/: the KVTC codec on the CPU -> libkvtc_codec.{a,so}
CODEC_SRCS := $(wildcard codec/*.c) common/errors.c
CODEC_OBJS := $(CODEC_SRCS:%.c=$(OBJ)/%.o)
CODEC_A  := $(LIBDIR)/libkvtc_codec.a
CODEC_SO := $(LIBDIR)/libkvtc_codec.so
LIBS += $(CODEC_A) $(CODEC_SO)

$(CODEC_A): $(CODEC_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^
$(CODEC_SO): $(CODEC_OBJS)
	@mkdir -p $(dir $@)
	$(CC) -shared $(LDFLAGS) -o $@ $^ $(CODEC_LDLIBS)
