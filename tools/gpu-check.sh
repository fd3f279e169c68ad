#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run (~8 minutes on an H100, 2026-11-26): the CUDA-only tests,
# the bench of the Fig. 4 setups (one run, fused array of 10, CUDA graph of the array) and a
# short real fused grid. Writes logs and JSON under ${OUT:-gpu-check}.
# Prepared with ../shared/tools/device-prepare.sh; run on the GPU machine from the checkout's root.
set -o pipefail
out=${OUT:-gpu-check}; mkdir -p "$out"
source .device/setup.sh || exit 1
export HYBRID_EXP_TEST_CACHE=/tmp CIFAR10_JPEG_TARBALL=$PWD/.device/cifar10-jpeg.tar.gz
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 150 python3 -m pytest -q -p no:cacheprovider tests/test_performance.py -k "cuda or gpu or precision" 2>&1 | tee "$out/tests.log"
timeout 270 python3 -m hybrid_exp.bench --device cuda --fuse 10 --seconds 3 --data-root /tmp/cifar10-jpeg \
  --models separable inception resnext reformulated_inception equivalent hybrid \
  --json "$out/bench-fig4.json" 2>&1 | tee "$out/bench-fig4.log"
# the product path: a real 10-seed grid of separable through python -m hybrid_exp, 3 epochs
timeout 200 python3 -c "import json; from hybrid_exp.benchmark import e2e
print(json.dumps(e2e(['separable'], '/tmp/cifar10-jpeg', 10, epochs=3), indent=1))" 2>&1 | tee "$out/e2e.log"
