#!/bin/sh
# The stories260K quality benchmark: kvtc vs the baselines, written to
# bench/results/quality-stories260K.{json,txt,png}. Called by
# `make bench-quality`; one to three minutes on 2 cores.
#   KVTC_QUALITY  the kvtc-quality binary (default build/bin/kvtc-quality)
#   KVTC_SHARED   the shared folder holding models/ (default ../shared)
#   PYTHON        a python3 with matplotlib (default Debian's /usr/bin/python3,
#                 which python3-matplotlib serves; a pyenv python3 may not)
set -eu
cd "$(dirname "$0")/../.."
bin=${KVTC_QUALITY:-build/bin/kvtc-quality}
model=${KVTC_SHARED:-../shared}/models/stories260K.bin
out=bench/results/quality-stories260K
py=${PYTHON:-/usr/bin/python3}
[ -x "$py" ] || py=python3

if [ ! -r "$model" ]; then
    echo "run-stories: $model not found: the shared models folder is absent, nothing measured" >&2
    exit 1
fi
mkdir -p bench/results
# --sens: the sensitivity-weighted experiment next to kvtc as the codec is
"$bin" --model "$model" --sens --out "$out.json" | tee "$out.txt"
if "$py" -c 'import matplotlib' 2>/dev/null; then
    "$py" bench/quality/plot.py "$out.json" "$out.png"
else
    echo "run-stories: $py has no matplotlib (deploy/install-deps.sh installs python3-matplotlib): no plot" >&2
    exit 1
fi
echo "run-stories: wrote $out.json $out.txt $out.png"
