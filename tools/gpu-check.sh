#!/usr/bin/env bash
# The GPU figures of docs/performance.md in one run whose step timeouts add up to 7 minutes (a
# lent GPU has 15 in all, its start included), the most wanted first, so a run cut short still
# brings back what matters most. Every bench step rewrites its JSON after each setup (each shape):
# a step its timeout kills leaves what it measured. Writes logs and JSON under ${OUT:-gpu-check}.
# Prepared with ../shared/tools/device-prepare.sh; run on the GPU machine from the checkout's root.
#
# Each timeout is sized from the 2026-11-26 H100 figures (docs/performance.md): ~15 s of Python and
# data start per bench command, then per setup ~3 s to build and warm an eager array of 10, the
# timed seconds per mode, ~5 s per CUDA graph capture and ~40 s per cold Inductor compile of an
# array (forward and backward), with a third on top for noise.
#
# DEVICE=cpu runs the same commands on a CPU with tiny budgets (FUSE, FUSE_LARGE, BATCH,
# SECONDS_PER_MODE, DATA; TIMEOUT_SCALE stretches the limits for a slow machine): the slow test
# tests/test_performance.py::test_the_gpu_check_script_runs_its_own_commands_on_a_cpu does, so an
# argument error or a missing file shows there, not on the GPU.
set -o pipefail
out=${OUT:-gpu-check}; mkdir -p "$out"
device=${DEVICE:-cuda}; fuse=${FUSE:-10}; fuse_large=${FUSE_LARGE:-20}; batch=${BATCH:-128}
seconds=${SECONDS_PER_MODE:-1.5}; data=${DATA:-/tmp/cifar10-jpeg}
if [ "$device" = cuda ]; then
  source .device/setup.sh || exit 1
  export HYBRID_EXP_TEST_CACHE=/tmp CIFAR10_JPEG_TARBALL=$PWD/.device/cifar10-jpeg.tar.gz
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
fi
export PYTHONUNBUFFERED=1
step() { local limit=$1; shift; timeout $((limit * ${TIMEOUT_SCALE:-1})) "$@"; }  # limit: seconds on the GPU
bench="python3 -m hybrid_exp.bench --device $device --batch-size $batch --data-root $data"
paper="separable inception resnext reformulated_inception equivalent hybrid"
# (a) 120 s: the paper's six as arrays of 10, one run and the array eager and as a CUDA graph
#     (15 s start + the first decode of the JPEGs into the cache, 6 x (3 modes x 1.5 s + 8 s))
step 120 $bench --seconds "$seconds" --fuse "$fuse" --modes fast fused graph --models $paper \
  --json "$out/paper-x10.json" 2>&1 | tee "$out/paper-x10.log"
# (b) 150 s: the compiled arrays of the heaviest setups and the baseline, as CUDA graphs
#     (15 s + 3 x ~40 s of compiling)
step 150 $bench --seconds "$seconds" --fuse "$fuse" --modes compiled_graph \
  --models inception resnext separable --json "$out/compiled-x10.json" 2>&1 | tee "$out/compiled-x10.log"
# (c) 40 s: max_array_size, the two heaviest as arrays of 20 (15 s + 2 x (2 x 1.5 s + 8 s))
step 40 $bench --seconds "$seconds" --fuse "$fuse_large" --modes fused graph --models inception resnext \
  --json "$out/heavy-x20.json" 2>&1 | tee "$out/heavy-x20.log"
# (d) 40 s: where cuDNN's grouped conv is slow: each conv shape of those arrays, in bf16
#     channels_last as the step runs it (15 s + ~35 shapes x 3 ways x (0.1 s + a warm-up call))
step 40 $bench --seconds 0.1 --fuse "$fuse" --shapes --models inception resnext \
  --json "$out/shapes.json" 2>&1 | tee "$out/shapes.log"
# (e) 70 s: the CUDA-only tests (collection, six short train() calls, two compiles of tiny nets)
step 70 python3 -m pytest -q -p no:cacheprovider -m gpu 2>&1 | tee "$out/tests.log"
exit 0
