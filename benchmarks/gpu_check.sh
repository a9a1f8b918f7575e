#!/usr/bin/env bash
# GPU check for drqa-plugin: run by whoever has a GPU at hand (CI never needs it), < 8 minutes on one GPU.
#   bash benchmarks/gpu_check.sh            (from anywhere; results in runs/gpu_check/, or $GPU_CHECK_DIR)
# 1. scorer on CUDA: fp32 parity with CPU, bf16 deviation, pairs/s
# 2. single-GPU training with bf16 autocast (recipes/accelerate/single_gpu.yaml)
# 3. DeepSpeed ZeRO-2 on one GPU with bf16 via torch_autocast (BatchNorm + DeepSpeed's native bf16 is a known trap)
# 4. training-step samples/s and fraction of the bf16/fp32 matmul peak (benchmarks/bench_train.py)
# Dependencies: uses the python that has CUDA torch (PYTHON=..., default python3). Offline machines: put wheels of
# the missing packages (deepspeed, hjson, pydantic, ...) in .whl/ (or WHEELHOUSE=...); otherwise they come from PyPI.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PY=${PYTHON:-python3}
RESULTS=${GPU_CHECK_DIR:-$REPO/runs/gpu_check}
mkdir -p "$RESULTS"
LOG=$RESULTS/gpu_check.log
: >"$LOG"
export PYTHONUNBUFFERED=1 TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$REPO/.cache/torch_extensions}
say() { echo "== $*" | tee -a "$LOG"; }
step() { local name=$1 limit=$2; shift 2; say "$name"; timeout "$limit" "$@" 2>&1 | tee -a "$LOG" | grep -v -E "WARNING|warn\(|^\s*$" | tail -n 25; local rc=${PIPESTATUS[0]}; say "$name: $([ "$rc" = 0 ] && echo OK || echo "FAILED (exit $rc)")"; return 0; }

# ---- dependencies -----------------------------------------------------------------------------------------
WHEELS=${WHEELHOUSE:-$REPO/.whl}
if ! $PY -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  echo "no CUDA torch in $PY; set PYTHON=/path/to/python with a CUDA build of torch" >&2; exit 1
fi
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/drqa-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/drqa-site
else
  $PY -m venv --system-site-packages "$REPO/.venv-gpu" && PY=$REPO/.venv-gpu/bin/python
  $PY -m pip install -q accelerate deepspeed transformers safetensors einops scikit-image scipy tqdm pyyaml matplotlib opencv-python-headless
fi
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
missing=$($PY - <<'EOF'
import importlib
print(" ".join(m for m in ("accelerate", "deepspeed", "transformers", "safetensors", "einops", "skimage", "scipy", "cv2", "yaml") if importlib.util.find_spec(m) is None))
EOF
)
[ -n "$missing" ] && { echo "missing python packages: $missing" >&2; exit 1; }
say "machine: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1); $($PY -c 'import torch, accelerate, deepspeed; print(f"torch {torch.__version__}, accelerate {accelerate.__version__}, deepspeed {deepspeed.__version__}")' 2>/dev/null)"
LAUNCH="$PY -m accelerate.commands.launch"

# ---- 1. scorer ---------------------------------------------------------------------------------------------
step "scorer: CUDA fp32 parity with CPU, bf16, pairs/s" 120 $PY - <<'EOF'
import time, torch
from skimage import data
from drqa_plugin import create_model
from drqa_plugin.scorer import DRIQA
torch.manual_seed(0)
model = create_model("ckdn_r50")
photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
x = torch.stack([torch.from_numpy(p[:288, :288]).permute(2, 0, 1).float() / 255 for p in photos])
y = torch.nn.functional.interpolate(torch.nn.functional.interpolate(x, scale_factor=0.25, mode="area"), size=(288, 288), mode="bicubic").clamp(0, 1)
cpu = DRIQA(model, preprocess="none")(x, y)
gpu = DRIQA(model, preprocess="none", device="cuda")(x, y)
bf = DRIQA(model, preprocess="none", device="cuda", dtype=torch.bfloat16)(x, y)
print(f"cpu fp32 {cpu.tolist()}\ncuda fp32 max |diff| {float((gpu - cpu).abs().max()):.2e} (tolerance 1e-4)\ncuda bf16 max |diff| {float((bf - cpu).abs().max()):.2e}")
assert float((gpu - cpu).abs().max()) < 1e-4
xb, yb = x.repeat(16, 1, 1, 1), y.repeat(16, 1, 1, 1)  # 64 pairs of 288 px
for name, dt in (("fp32", None), ("bf16", torch.bfloat16)):
    s = DRIQA(model, preprocess="none", device="cuda", dtype=dt, chunk_size=64)
    s(xb, yb); torch.cuda.synchronize(); t = time.perf_counter(); n = 5
    for _ in range(n): s(xb, yb)
    torch.cuda.synchronize(); dt_s = (time.perf_counter() - t) / n
    print(f"scorer {name}: {64 / dt_s:.0f} pairs/s at 288 px on {torch.cuda.get_device_name()} (incl. host->device copies)")
EOF

# ---- 2 + 3. training -------------------------------------------------------------------------------------
TRAIN_ARGS=(-m drqa_plugin.train --config recipes/configs/test_tiny.yaml runtime.mixed_precision=null runtime.cpu_threads=0
            data.crop=160 data.num_samples=256 data.val_samples=32 loader.batch_size=16 loader.eval_batch_size=32
            loader.num_workers=6 max_steps=24 checkpoint_every=12 schedule.stage2_start=12 log.log_every=4)
step "single-GPU training, bf16 autocast" 180 $LAUNCH --config_file recipes/accelerate/single_gpu.yaml "${TRAIN_ARGS[@]}" output_dir="$RESULTS/single_gpu"
step "DeepSpeed ZeRO-2, 1 GPU, bf16 via torch_autocast" 180 $LAUNCH --config_file recipes/accelerate/deepspeed_zero2.yaml --num_processes 1 "${TRAIN_ARGS[@]}" output_dir="$RESULTS/zero2"
$PY - "$RESULTS" <<'EOF' | tee -a "$LOG"
import csv, json, math, sys
from pathlib import Path
for run in ("single_gpu", "zero2"):
    p = Path(sys.argv[1]) / run
    if not (p / "summary.json").is_file():
        print(f"{run}: no summary (failed)"); continue
    s = json.loads((p / "summary.json").read_text())
    rows = [r for r in csv.DictReader((p / "metrics.csv").open()) if r["split"] == "train"]
    finite = all(math.isfinite(float(r["loss"])) for r in rows)
    bs = s["config"]["loader"]["batch_size"] * s["num_processes"]
    print(f"{run}: {s['distributed_type']} x{s['num_processes']}, mixed_precision={s['mixed_precision']}, "
          f"deepspeed_autocast={s['deepspeed_autocast']}, {s['steps']} steps in {s['seconds']:.1f} s "
          f"({s['steps'] * bs / s['seconds']:.1f} samples/s incl. on-the-fly synthetic data and evals), "
          f"losses finite: {finite}, final eval: {s['final_eval']}")
EOF

# ---- 4. training-step throughput -------------------------------------------------------------------------
step "training step throughput at 288 px (random inputs)" 150 $PY benchmarks/bench_train.py --batch 32 --steps 10 --skip-scaling --json "$RESULTS/bench_train.json"
say "done; full log: $LOG"
