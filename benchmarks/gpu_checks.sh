#!/usr/bin/env bash
# Every check that needs a GPU, in one run, so that a short loan of a GPU machine is enough:
#   1. the CUDA tests (tests/test_cuda.py) and the engine's tests (tests/test_train.py) on it;
#   2. the throughput benchmark on gmm8 and on the 8x8 digits model (engine against the naive
#      eager loop, peak memory), written as JSON;
#   3. the cost of the time samplers against one ensemble training step.
# A failing step is reported and the later ones still run; the exit status says whether all
# passed. Without a GPU the device and test steps fail (the benchmarks then run on the CPU).
#
#   bash benchmarks/gpu_checks.sh [OUT_DIR]        (default results/gpu)
#   THROUGHPUT_ARGS="--members 256 --steps 100" bash benchmarks/gpu_checks.sh   (smaller runs)
#
# PYTHON picks the interpreter (default: .venv/bin/python when present, else python3). The
# repository is put on PYTHONPATH, so an interpreter with the dependencies but without
# fmstudy installed will do.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/gpu}
mkdir -p "$out"
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 FMSTUDY_REQUIRE_CUDA=1
read -r -a extra <<< "${THROUGHPUT_ARGS:-}"
failed=()

step() {  # step NAME COMMAND...: run it, keep its output in $out/NAME.txt
    local name=$1
    shift
    echo "== $name: $*"
    local start=$SECONDS
    if "$@" 2>&1 | tee "$out/$name.txt"; then
        echo "== $name passed in $((SECONDS - start)) s"
    else
        echo "== $name FAILED in $((SECONDS - start)) s"
        failed+=("$name")
    fi
}

step device "$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'torch sees no CUDA device'; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
# -o addopts= drops --nbval (the notebook check needs the book's packages and no GPU).
step pytest "$PYTHON" -m pytest -q -p no:cacheprovider -o addopts=-ra tests/test_cuda.py tests/test_train.py
# Longer runs than the CPU default of 200 steps: the 12 diagnostic checkpoints of a run are
# then a share of it closer to a study's run (the full profile trains 10,000 steps).
step throughput_gmm8 "$PYTHON" benchmarks/throughput.py --steps 1000 --json "$out/throughput_gmm8.json" "${extra[@]}"
step throughput_digits "$PYTHON" benchmarks/throughput.py --benchmark digits --steps 500 --json "$out/throughput_digits.json" "${extra[@]}"
step sampler_overhead "$PYTHON" benchmarks/sampler_overhead.py

if [ ${#failed[@]} -gt 0 ]; then
    echo "failed: ${failed[*]} (logs in $out)"
    exit 1
fi
echo "all GPU checks passed (logs and JSON in $out; copy $out/throughput_*.json into book/measured/ to show them in the book)"
