#!/usr/bin/env bash
# The GPU check, for a machine with a GPU and a CUDA torch already installed (no network needed):
# build pylander against that torch, benchmark the ops on the GPU, run the CUDA tests (the op
# suite's CUDA params, `-k cuda`, and tests/test_cuda_training.py), then time the trainer with its
# policy on the GPU and on the CPU. FULL=1 adds the CPU op and training tests against the CUDA
# build. Run from the repo root. Logs go to $OUT (default
# /tmp/pylander-gpu-logs), eight files at most; summary.txt is the short version. Pure-Python
# packages the machine lacks (gymnasium, Box2D, pygame) can be brought as wheels in .whl/.
set -u
REPO=$(pwd); PY=${PYTHON:-python3}; OUT=${OUT:-/tmp/pylander-gpu-logs}; mkdir -p "$OUT"
S="$OUT/summary.txt"; : > "$S"; : > "$OUT/env.log"
step() { echo "[$(date +%T)] $*" | tee -a "$S"; }

if compgen -G ".whl/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .whl/*.whl >> "$OUT/env.log" 2>&1 || { step "wheel install failed"; cat "$OUT/env.log"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{ nvidia-smi -L; nvcc --version | tail -n 1; gcc --version | head -n 1; lscpu | grep "Model name"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
  $PY -c "import os, torch; print('libstdc++', sorted({l.split()[-1] for l in open('/proc/self/maps') if 'libstdc++' in l}), 'LD_LIBRARY_PATH', os.environ.get('LD_LIBRARY_PATH'))"
} >> "$OUT/env.log" 2>&1
cat "$OUT/env.log" >> "$S"

# Compile for this GPU only (torch ignores CMAKE_CUDA_ARCHITECTURES and reads TORCH_CUDA_ARCH_LIST).
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')")
[ -n "$ARCH" ] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
step "build (TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-})"
# A fresh build dir, so no CMake cache from a CPU-torch build is reused.
timeout 600 $PY -m pip install --no-build-isolation --no-deps -v -Cbuild-dir=/tmp/pylander-gpu-build . \
  > "$OUT/build.log" 2>&1
rc=$?
step "build rc=$rc"
grep -E "pylander: |CUDA NVCC flags|CMake Error" "$OUT/build.log" >> "$S"
if [ $rc -ne 0 ]; then grep -B2 -A12 -m3 -E "CMake Error|error:" "$OUT/build.log" >> "$S"; cat "$S"; exit 1; fi

# Outside the checkout: from the repo root, `python -m` would import the source tree (no _C).
cd /tmp || exit 1
$PY -c "import pylander; print('pylander', pylander.__file__, 'CUDA_KERNELS', pylander.CUDA_KERNELS)" >> "$S" 2>&1
BENCH="$PY -m pylander.bench"
step "bench: ops on the GPU"
timeout 120 $BENCH --device cuda --only ops --json "$OUT/bench_ops_cuda.json" > "$OUT/bench.log" 2>&1
step "bench ops rc=$?"
step "CUDA tests (pytest -k cuda)"
PT="$PY -m pytest -p no:cacheprovider --rootdir=$REPO -rs --tb=short"
T="$REPO/tests"; OP_TESTS=("$T/test_ops.py" "$T/test_ops_sampling.py" "$T/test_ops_errors.py"
  "$T/test_actor_critic_ops.py" "$T/test_clipped_loss.py" "$T/test_clip_grad_norms.py" "$T/test_adam_scan.py")
timeout 300 $PT -q -k cuda "${OP_TESTS[@]}" "$T/test_cuda_training.py" > "$OUT/test_cuda.log" 2>&1
step "test_cuda rc=$? ($(tail -n 1 "$OUT/test_cuda.log"))"
grep -E "^(FAILED|ERROR)" "$OUT/test_cuda.log" | head -n 20 >> "$S"
UPDATES=${TRAINER_UPDATES:-40}
for device in cuda cpu; do
  step "bench: trainer, policy on $device ($UPDATES updates)"
  timeout 200 $BENCH --device $device --only trainer --trainer-updates "$UPDATES" \
    --json "$OUT/bench_trainer_$device.json" >> "$OUT/bench.log" 2>&1
  step "bench trainer $device rc=$?"
done
grep -E "^trainer|^  \[" "$OUT/bench.log" >> "$S"
if [ "${FULL:-0}" = 1 ]; then
  step "CPU op and training tests against the CUDA build"
  timeout 600 $PT -q -n "$(nproc)" -k "not cuda" "${OP_TESTS[@]}" "$REPO/tests/test_train.py" \
    "$REPO/tests/test_rollout.py" "$REPO/tests/test_seed_parity.py" > "$OUT/test_more.log" 2>&1
  step "more tests rc=$? ($(tail -n 1 "$OUT/test_more.log"))"
fi
cat "$S"
