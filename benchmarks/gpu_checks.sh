#!/usr/bin/env bash
# The checks that need a GPU, as one run: the CUDA parity tests, the
# few-shot benchmark on the GPU, and the search tests with the GPU as the
# default device (device="auto" picks it).
#
# Usage: DATA=folder-with-omniglot.npz RESULTS=out-folder \
#            bash benchmarks/gpu_checks.sh [few-shot budget in seconds]
#
# Each part has its own time limit, so that a slow part cannot eat the next
# one's; logs and result tables are copied to RESULTS. The package is used
# from the source tree (PYTHONPATH); scikit-learn must be 1.6 or newer.
set -u
DATA=${DATA:-../shared/data}
RESULTS=${RESULTS:-benchmarks/results}
BUDGET=${1:-300}
export PYTHONUNBUFFERED=1
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
mkdir -p "$RESULTS"
PYTEST=(python3 -m pytest -q -p no:cacheprovider -o addopts= -W ignore::DeprecationWarning -W ignore::FutureWarning)

nvidia-smi -L
python3 -c "import torch, sklearn; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'sklearn', sklearn.__version__)"

echo "== CUDA parity tests"
timeout 100 "${PYTEST[@]}" -rs -k gpu tests/test_hypergrad.py tests/test_meta_estimator.py \
    tests/test_neural_network.py tests/test_search.py 2>&1 | tee "$RESULTS/gpu_tests.log"

echo "== few-shot benchmark on the GPU"
timeout $((BUDGET + 120)) python3 benchmarks/bench_few_shot.py --device cuda --data "$DATA" \
    --budget "$BUDGET" --meta-batch-size 32 --fixed-inner-lr --validation-interval 500 \
    --verbose 0 --tag gpu 2>&1 | tee "$RESULTS/gpu_few_shot.log"
cp benchmarks/results/bench_few_shot/gpu* "$RESULTS"/ 2>/dev/null

echo "== search tests with the GPU as the default device"
timeout 60 "${PYTEST[@]}" -x tests/test_search.py 2>&1 | tee "$RESULTS/gpu_search_tests.log"
