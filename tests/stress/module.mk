# tests/stress/: `make test-tsan` compiles libkvtc's sources with
# ThreadSanitizer into one program (tests/stress/pipelined.c) and runs it
# against this build's kvtcd over UCX tcp with 2 and 8 requests in flight,
# every byte checked: libkvtc's checker thread (client/checker.c), its
# one-bulk-send-at-a-time queue and its rail threads (client/rail_threads.c)
# under the race detector. Not part of
# `make test`: UCX's memory hooks must be off under TSan (run_tsan.sh).
TSAN_DIR := $(BUILD)/tsan
TSAN_SRCS := tests/stress/pipelined.c $(CLIENT_SRCS) common/wire.c $(WIRE_GEN_C)

$(TSAN_DIR)/pipelined: $(TSAN_SRCS) $(CODEC_A) | $(WIRE_GEN_H)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) -std=c11 -O1 -g -pthread -fsanitize=thread -o $@ $(TSAN_SRCS) \
	    $(CODEC_A) -lucp -lucs $(WIRE_LDLIBS) -lcrypto $(CODEC_LDLIBS)

.PHONY: test-tsan
test-tsan: $(BINS) $(TSAN_DIR)/pipelined
	tests/stress/run_tsan.sh $(BINDIR)/kvtcd $(TSAN_DIR)/pipelined
