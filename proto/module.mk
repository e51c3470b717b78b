# proto/: the wire protocol -> build/lib/libkvtc_wire.a
# protoc-c generates C from proto/kvtc.proto into $(BUILD)/gen/ (never
# committed); the generated code and common/wire.c (framing, limits, status
# mapping) form one small static library that the daemon and libkvtc link.
#   WIRE_A       the library
#   WIRE_LDLIBS  what a binary linking WIRE_A also needs
#   WIRE_GEN_H   the generated header (order-only prerequisite for objects)
PROTOC_C ?= protoc-c
WIRE_GEN_DIR := $(BUILD)/gen
WIRE_GEN_C := $(WIRE_GEN_DIR)/kvtc.pb-c.c
WIRE_GEN_H := $(WIRE_GEN_DIR)/kvtc.pb-c.h
WIRE_OBJS := $(OBJ)/gen/kvtc.pb-c.o $(OBJ)/common/wire.o
WIRE_A := $(LIBDIR)/libkvtc_wire.a
WIRE_LDLIBS := -lprotobuf-c -lxxhash
LIBS += $(WIRE_A)

# Generated code must exist before any object that includes it is compiled,
# and .d files only know that after a first build. Making the stamp an
# included makefile forces make to generate it (and restart) before it
# builds anything else, for every object of every module at once.
WIRE_GEN_STAMP := $(WIRE_GEN_DIR)/kvtc_proto.mk
$(WIRE_GEN_STAMP): proto/kvtc.proto proto/module.mk
	@mkdir -p $(WIRE_GEN_DIR)
	$(PROTOC_C) --proto_path=proto --c_out=$(WIRE_GEN_DIR) proto/kvtc.proto
	@echo '# stamp: $(WIRE_GEN_C) is current' > $@
include $(WIRE_GEN_STAMP)

$(WIRE_GEN_C) $(WIRE_GEN_H): $(WIRE_GEN_STAMP)

$(OBJ)/gen/kvtc.pb-c.o: $(WIRE_GEN_C) $(WIRE_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -MMD -MP -c $< -o $@

$(OBJ)/common/wire.o: | $(WIRE_GEN_H)

$(WIRE_A): $(WIRE_OBJS)
	@mkdir -p $(dir $@)
	$(AR) rcs $@ $^

TEST_DEPS += $(WIRE_A)
TEST_LDLIBS += $(WIRE_A) $(WIRE_LDLIBS)
