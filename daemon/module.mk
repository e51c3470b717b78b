# daemon/: kvtcd. Everything but main.c goes into libkvtcd.a so the unit
# tests link the daemon's internals (index, store, config, handlers).
KVTCD_SRCS := $(filter-out daemon/main.c,$(wildcard daemon/*.c))
KVTCD_OBJS := $(KVTCD_SRCS:%.c=$(OBJ)/%.o)
KVTCD_A := $(LIBDIR)/libkvtcd.a
KVTCD_LDLIBS := -luv -luring -lucp -lucs -linih -lhttp_parser $(WIRE_LDLIBS)
LIBS += $(KVTCD_A)
BINS += $(BINDIR)/kvtcd

$(KVTCD_OBJS) $(OBJ)/daemon/main.o: | $(WIRE_GEN_H)

$(KVTCD_A): $(KVTCD_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

$(BINDIR)/kvtcd: $(OBJ)/daemon/main.o $(KVTCD_A) $(WIRE_A) $(CODEC_A)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $(OBJ)/daemon/main.o $(KVTCD_A) $(WIRE_A) \
	    $(CODEC_A) $(KVTCD_LDLIBS) $(CODEC_LDLIBS)

TEST_DEPS += $(KVTCD_A) $(BINDIR)/kvtcd
TEST_LDLIBS += $(KVTCD_A) $(WIRE_A) $(CODEC_A) $(KVTCD_LDLIBS)

# Unit tests of daemon internals include its private headers.
$(OBJ)/tests/unit/test_daemon_%.o: CPPFLAGS += -Idaemon
