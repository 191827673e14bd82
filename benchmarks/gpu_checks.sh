#!/usr/bin/env bash
# Every check that needs a GPU, on a CUDA machine (e.g. through the device tool: run
# "bash benchmarks/gpu_checks.sh PART" with carry [".whl"], where .whl/ holds wheels of the
# pure-Python dependencies for a machine without network). PART is all (default), or one of
# tests, kernels, sampling-S, sampling-B, sampling-XL (one DiT size each), sampling (all
# three), finetune (DiT-XL/2 NAG fine-tune steps/s), shards (the sharded writer against
# Sampler.sample at DiT-XL/2) or fp8 (dtype="fp8" against bf16: error, DiT-XL/2 speed), so that
# each fits a 10-minute call;
# every part installs the project first, with `python3 -m pip` (the image's bare `pip` may belong
# to another Python than the python3 that holds torch), unless nag_engine._C with CUDA already
# imports; then, where torch sees a GPU, it stops with exit status 1 unless nag_engine._C
# imports with CUDA and the Triton kernels are available (no silent fall-back to plain torch).
# Every Python command is python3. Writes to ${OUT:-out/gpu}:
#   device.txt        the GPU, torch, and which fused-step backends run
#   install.log       building nag_engine._C with its CUDA part
#   tests.txt         the kernel, graph, attention and sampler tests on CUDA tensors
#   fused_step_gpu.*  the fused step (triton, cuda) vs a copy, LayerNorm+adaLN, Picard update
#   host_overhead_gpu.*  host µs of one eager fused-step call, checked vs bound (BoundStep)
#   sampling*.*       the peers (p1-p4) and nag_engine (n1-n3) on DiT-S/B/XL (sampling-S.* for one)
#   nag_finetune_gpu.json  DiT-XL/2 fine-tune steps/s at batch 32, bf16, p_t 0.2 vs 0
#   shards_gpu.*      sample_to_disk against Sampler.sample, DiT-XL/2 batch 256 (writer overhead)
#   fp8_gpu.*         fp8 against bf16: sample error (digits, DiT-S/2), DiT-XL/2 b256 ms/step
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-out/gpu}
PART=${1:-all}
case "$PART" in
  all|tests|kernels|sampling|finetune|shards|fp8) models="DiT-S/2,DiT-B/2,DiT-XL/2"; name=sampling ;;
  sampling-S|sampling-B|sampling-XL) models="DiT-${PART#sampling-}/2"; name=$PART ;;
  *) echo "unknown part $PART: all|tests|kernels|sampling|sampling-S|sampling-B|sampling-XL|finetune|shards|fp8"
     exit 2 ;;
esac
mkdir -p "$OUT"
if ! python3 -c "import nag_engine._C as c, sys; sys.exit(not c.with_cuda)" 2>/dev/null; then
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --find-links .whl tqdm safetensors scikit-learn \
    hypothesis pytest-benchmark > "$OUT/deps.log" 2>&1 \
    || echo "some wheels did not install (see $OUT/deps.log)"
fi
NAG_ENGINE_REQUIRE_EXT=1 python3 -m pip install --no-build-isolation --no-deps -e . \
  > "$OUT/install.log" 2>&1 \
  || { echo "CUDA build failed ($OUT/install.log); installing without requiring it"; \
       python3 -m pip install --no-build-isolation --no-deps -e . >> "$OUT/install.log" 2>&1; }
fi
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  python3 -c "from nag_engine import backends; print(backends.available())"
} 2>&1 | tee "$OUT/device.txt"
# On a GPU, the checks below measure nothing useful without the project's kernels: stop here.
if ! python3 - >> "$OUT/device.txt" 2>&1 <<'PY'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(0)
problems = []
try:
    import nag_engine._C as ext

    if not ext.with_cuda:
        problems.append("nag_engine._C was built without CUDA")
except ImportError as err:
    problems.append(f"nag_engine._C does not import ({err})")
try:
    import nag_engine.kernels  # noqa: F401
    from nag_engine import backends

    triton = backends.available()["triton"]
    if triton != "yes":
        problems.append(f"the Triton kernels are not available ({triton})")
except ImportError as err:
    problems.append(f"nag_engine.kernels does not import ({err})")
for problem in problems:
    print("gpu_checks:", problem)
sys.exit(1 if problems else 0)
PY
then
  echo "FAILED: torch sees a GPU but the project's kernels are not all there:" >&2
  grep "^gpu_checks:\|Error" "$OUT/device.txt" >&2
  echo "see $OUT/install.log (installed with python3 -m pip, python3 is $(command -v python3))" >&2
  exit 1
fi
if [ "$PART" = all ] || [ "$PART" = tests ]; then
timeout 540 python3 -m pytest -q -x tests/test_kernels.py tests/test_kernels_adaln.py \
  tests/test_graphs.py tests/test_attention.py tests/test_sampler.py tests/test_precision.py \
  tests/test_parallel.py tests/test_kernels_picard.py tests/test_compile.py tests/test_fp8.py \
  tests/test_bound_step.py \
  2>&1 | tail -40 > "$OUT/tests.txt"
tail -3 "$OUT/tests.txt"
fi
if [ "$PART" = all ] || [ "$PART" = kernels ]; then
timeout 540 python3 benchmarks/bench_fused_step_gpu.py --out "$OUT/fused_step_gpu.json" \
  > "$OUT/fused_step_gpu.md" 2>&1
tail -30 "$OUT/fused_step_gpu.md"
timeout 120 python3 -m benchmarks.host_overhead --device cuda --out "$OUT/host_overhead_gpu.json" \
  > "$OUT/host_overhead_gpu.md" 2>&1
tail -6 "$OUT/host_overhead_gpu.md"
fi
if [ "$PART" = all ] || [ "${PART%%-*}" = sampling ]; then
extra=$(python3 -c "import diffusers" 2>/dev/null && echo --diffusers || true)
timeout 1800 python3 -m benchmarks.sampling --models "$models" $extra --out "$OUT/$name.json" \
  > "$OUT/$name.md" 2>&1
tail -30 "$OUT/$name.md"
fi
if [ "$PART" = all ] || [ "$PART" = finetune ]; then
timeout 540 python3 -m benchmarks.nag_finetune --gpu-only --out "$OUT" > "$OUT/nag_finetune_gpu.md" 2>&1
tail -3 "$OUT/nag_finetune_gpu.md"
fi
if [ "$PART" = all ] || [ "$PART" = shards ]; then
timeout 540 python3 -m benchmarks.distributed_sampling --model DiT-XL/2 --device cuda \
  --num-samples 1024 --steps 25 --batch-size 256 --shard-size 256 --repeats 2 --ranks 0 \
  --out "$OUT/shards_gpu.json" > "$OUT/shards_gpu.md" 2>&1
tail -8 "$OUT/shards_gpu.md"
fi
if [ "$PART" = all ] || [ "$PART" = fp8 ]; then
timeout 540 python3 -m benchmarks.fp8 --speed --device cuda --out "$OUT/fp8_gpu.json" \
  > "$OUT/fp8_gpu.md" 2>&1
tail -12 "$OUT/fp8_gpu.md"
fi
