#!/usr/bin/env bash
# For a machine with a GPU and a CUDA torch already installed (no network needed): build pylander
# against that torch, run tests/test_cuda.py and then the rest of the suite. Run from the repo root;
# logs go to $OUT (default /tmp/pylander-gpu-logs).
set -u
REPO=$(pwd); PY=${PYTHON:-python}; OUT=${OUT:-/tmp/pylander-gpu-logs}; mkdir -p "$OUT"
S="$OUT/summary.txt"; : > "$S"
{ nvidia-smi; command -v nvcc && nvcc --version; echo "CUDA_HOME=${CUDA_HOME:-}"
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), 'devices', torch.cuda.device_count())"
  $PY -m pip list 2>/dev/null | grep -iE '^(torch|scikit.build.core|pybind11|cmake|ninja|pytest|hypothesis|numpy|gymnasium) '
} > "$OUT/env.log" 2>&1
# Compile for this GPU only (torch ignores CMAKE_CUDA_ARCHITECTURES and reads TORCH_CUDA_ARCH_LIST).
ARCH=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability() if torch.cuda.is_available() else '')")
[ -n "$ARCH" ] && export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$ARCH}
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
echo "TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-}" >> "$S"
# A fresh build dir, so no CMake cache from a CPU-torch build is reused.
timeout 1800 $PY -m pip install --no-build-isolation --no-deps -v -Cbuild-dir=/tmp/pylander-gpu-build . \
  > "$OUT/build.log" 2>&1
echo "build rc=$?" >> "$S"
grep -E "pylander: torch|CUDA NVCC flags" "$OUT/build.log" >> "$S"
grep -nE "error|warning" "$OUT/build.log" | grep -E "csrc/" | head -40 > "$OUT/build_csrc_diagnostics.log"
# Run outside the checkout: `python -m pytest` from the repo root would import the source tree
# (which has no _C module) instead of the installed package.
cd /tmp || exit 1
$PY -c "import pylander; print('pylander', pylander.__file__, 'CUDA_KERNELS', pylander.CUDA_KERNELS)" >> "$S" 2>&1
PT="$PY -m pytest -p no:cacheprovider --rootdir=$REPO -rs"
timeout 1200 $PT -v "$REPO/tests/test_cuda.py" --junitxml="$OUT/test_cuda.xml" > "$OUT/test_cuda.log" 2>&1
echo "test_cuda rc=$? ($(tail -n 1 "$OUT/test_cuda.log"))" >> "$S"
timeout 2400 $PT -q "$REPO/tests" --ignore="$REPO/tests/test_cuda.py" --junitxml="$OUT/test_rest.xml" \
  > "$OUT/test_rest.log" 2>&1
echo "other tests rc=$? ($(tail -n 1 "$OUT/test_rest.log"))" >> "$S"
cat "$S"
