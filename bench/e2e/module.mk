# bench/e2e: time to first token with a Llama-3.1-8B-shaped model (Hugging
# Face transformers, random bf16 weights) and a 32K-token prefix: recompute
# vs restore from kvtcd (raw, daemon-side decode, client-side GPU decode),
# and stored bytes per token of each mode. See bench/e2e/README.md.
#   make bench-e2e        on a GPU machine with torch + transformers:
#                         -> bench/results/e2e-h100.json (BENCH_E2E_OUT);
#                         elsewhere it says why it skips
#   make bench-e2e-tiny   the CPU smoke test (2 layers, 1K tokens) of the
#                         same flow; needs torch + transformers, no GPU
# BENCH_E2E_PYTHON: the python with torch + transformers (default python3);
# BENCH_E2E_ARGS: more bench/e2e/e2e.py options.
BENCH_E2E_PYTHON ?= python3
BENCH_E2E_OUT ?= bench/results/e2e-h100.json
BENCH_E2E_DEPS := $(BINDIR)/kvtcd $(CLIENT_SO) $(if $(GPU_READY),$(GPU_SO))
BENCH_E2E_ENV := KVTC_BUILD=$(abspath $(BUILD)) KVTC_E2E_PYTHON=$(BENCH_E2E_PYTHON) \
                 $(if $(GPU_READY),$(GPU_RUNENV))

.PHONY: bench-e2e bench-e2e-tiny
bench-e2e: $(BENCH_E2E_DEPS)
	@if ! $(BENCH_E2E_PYTHON) -c 'import sys, torch, transformers; sys.exit(not torch.cuda.is_available())' \
	     >/dev/null 2>&1; then \
	  echo "bench-e2e: skipped (needs a CUDA GPU and $(BENCH_E2E_PYTHON) with torch + transformers;" \
	       "make bench-e2e-tiny is the CPU smoke test)"; \
	else \
	  $(if $(GPU_READY),,echo "bench-e2e: no libkvtc_gpu (nvcc + nvCOMP): the client decodes on the CPU";) \
	  $(BENCH_E2E_ENV) bench/e2e/run.sh --out $(BENCH_E2E_OUT) $(BENCH_E2E_ARGS); \
	fi

bench-e2e-tiny: $(BENCH_E2E_DEPS)
	@if ! $(BENCH_E2E_PYTHON) -c 'import torch, transformers' >/dev/null 2>&1; then \
	  echo "bench-e2e-tiny: skipped ($(BENCH_E2E_PYTHON) lacks torch or transformers;" \
	       "BENCH_E2E_PYTHON=.venv/bin/python after bench/quality/hf/setup.sh)"; \
	else \
	  KVTC_E2E_HOST_MEM=1G $(BENCH_E2E_ENV) bench/e2e/run.sh --tiny $(BENCH_E2E_ARGS); \
	fi
