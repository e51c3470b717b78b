# client/cli: the `kvtc` command-line tool -> build/bin/kvtc
CLI_SRCS := $(wildcard client/cli/*.c)
CLI_OBJS := $(CLI_SRCS:%.c=$(OBJ)/%.o)
CLI_LIBS := $(CODEC_A)
CLI_LDLIBS := $(CODEC_LDLIBS)
BINS += $(BINDIR)/kvtc

$(BINDIR)/kvtc: $(CLI_OBJS) $(CLI_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(CLI_LIBS) $(CLI_LDLIBS)
