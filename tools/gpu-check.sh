#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run of under 9 minutes: the CUDA-only tests, the
# bench of every setup of Figs. 4-6 (one run, fused array of 10, CUDA graph of the array), the
# paper's six Fig. 4 setups as arrays of 20, the compiled arrays of the heaviest setups, a short
# real fused grid, and each conv shape of those setups' arrays in the alternatives to cuDNN's
# grouped conv. The timeouts add up to 9 minutes. Writes logs and JSON under ${OUT:-gpu-check}.
# Prepared with ../shared/tools/device-prepare.sh; run on the GPU machine from the checkout's root.
set -o pipefail
out=${OUT:-gpu-check}; mkdir -p "$out"
source .device/setup.sh || exit 1
export HYBRID_EXP_TEST_CACHE=/tmp CIFAR10_JPEG_TARBALL=$PWD/.device/cifar10-jpeg.tar.gz PYTHONUNBUFFERED=1
bench="python3 -m hybrid_exp.bench --device cuda --seconds 1.5 --data-root /tmp/cifar10-jpeg"
paper="separable inception resnext reformulated_inception equivalent hybrid"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
timeout 90 python3 -m pytest -q -p no:cacheprovider -m gpu 2>&1 | tee "$out/tests.log"
# every setup of Figs. 4-6 (the default --models), arrays of 10
timeout 185 $bench --fuse 10 --json "$out/bench-x10.json" 2>&1 | tee "$out/bench-x10.log"
# max_array_size: the paper's six as arrays of 20
timeout 80 $bench --fuse 20 --models $paper --json "$out/bench-x20.json" 2>&1 | tee "$out/bench-x20.log"
# trainer.compile=true: which setups gain (compile time counted in the warm-up)
timeout 90 $bench --fuse 10 --compile --models separable inception resnext \
  --json "$out/bench-compiled.json" 2>&1 | tee "$out/bench-compiled.log"
# the product path: a real 10-seed grid of separable through python -m hybrid_exp, 3 epochs
timeout 50 python3 -c "import json; from hybrid_exp.benchmark import e2e
print(json.dumps(e2e(['separable'], '/tmp/cifar10-jpeg', 10, epochs=3), indent=1))" 2>&1 | tee "$out/e2e.log"
# where cuDNN's grouped conv is slow: every conv shape of the arrays, as grouped / per member / matmul
timeout 45 python3 -m hybrid_exp.bench --device cuda --seconds 0.1 --data-root /tmp/cifar10-jpeg --shapes \
  --fuse 10 --models separable inception resnext --json "$out/shapes.json" 2>&1 | tee "$out/shapes.log"
