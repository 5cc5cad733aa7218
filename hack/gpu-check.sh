#!/usr/bin/env bash
# The runtime's and kernels' CUDA paths on a machine with a GPU and torch installed (no rig, no
# kubernetes client): the runtime tests (ops against their references on cuda, training, resume
# that matches an uninterrupted run, checkpoint on SIGTERM), then the kernel bench with --device
# cuda. OUT (default .bench) receives the logs and results.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-.bench}
mkdir -p "$OUT"
PY=${PY:-python3}
export PYTHONPATH="kernels:tests/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-')"
timeout "${RUNTIME_TIMEOUT_S:-300}" $PY -m pytest -q -p no:cacheprovider --noconftest tests/runtime 2>&1 | tee "$OUT/gpu-runtime.log"
tests=${PIPESTATUS[0]}
timeout "${BENCH_TIMEOUT_S:-200}" $PY tests/bench/kernels.py --device cuda --quick 2>&1 | tee "$OUT/gpu-bench.log"
bench=${PIPESTATUS[0]}
[ -f .bench/results.json ] && [ "$OUT" != .bench ] && cp .bench/results.json "$OUT/gpu-results.json"
echo "runtime tests rc=$tests, kernel bench rc=$bench"
exit $((tests || bench))
