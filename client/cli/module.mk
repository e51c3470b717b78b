# client/cli: the `kvtc` command-line tool -> build/bin/kvtc
CLI_SRCS := $(wildcard client/cli/*.c)
CLI_OBJS := $(CLI_SRCS:%.c=$(OBJ)/%.o)
# libkvtc (which carries the wire framing) before the codec library it uses;
# the model runner (kvtc demo) before the codec it calls too.
CLI_LIBS := $(CLIENT_A) $(MODEL_A) $(CODEC_A)
CLI_LDLIBS := $(CLIENT_LDLIBS) $(CODEC_LDLIBS)
BINS += $(BINDIR)/kvtc

$(BINDIR)/kvtc: $(CLI_OBJS) $(CLI_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(CLI_OBJS) $(CLI_LIBS) $(CLI_LDLIBS)
