"""What ships, as it ships: every CPU-runnable launcher x every training config, defaults untouched.

Only ``max_steps``, ``output_dir`` and data paths are overridden (and the launcher's process
count, 2 here: the DeepSpeed YAMLs name 8 GPUs). A test that changes a default (channels-last,
precision, crop, workers) tests something no user runs: the DeepSpeed recipes crashed with the
shipped configs while a test config that turned channels-last off kept CI green.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_train_distributed import REPO, _accelerate, _env, _free_port

import drqa_plugin as dq
from drqa_plugin.train.config import load_config

pytestmark = pytest.mark.slow

CONFIGS = sorted(p.name for p in (REPO / "recipes" / "configs").glob("*.yaml"))
# Launchers a 2-core CPU machine can run; the GPU ones are validated in test_train_config.py.
CPU_LAUNCHERS = {
    "cpu_2proc.yaml": True,  # DDP over gloo: ACCELERATE_USE_CPU=1
    "deepspeed_zero1.yaml": False,  # DeepSpeed picks gloo itself; ACCELERATE_USE_CPU would silently mean DDP
    "deepspeed_zero2.yaml": False,
}
EXPECTED_TYPE = {"cpu_2proc.yaml": "MULTI_CPU", "deepspeed_zero1.yaml": "DEEPSPEED", "deepspeed_zero2.yaml": "DEEPSPEED"}


def _tiny_pipal(root: Path, crop: int, per_scene: int = 5) -> Path:
    """A PIPAL-layout folder whose images are just large enough for the recipe's crop.

    ``per_scene`` restorations of each of 5 training scenes: enough for one global batch of the recipe.
    """
    from conftest import photo

    root.mkdir(parents=True, exist_ok=True)
    size = crop + 16
    lines, val_lines = [], []
    rng = np.random.default_rng(0)
    # The last scene is also written as val.txt, for recipes that name a separate val list.
    for s, name in enumerate(("astronaut", "coffee", "chelsea", "rocket", "camera", "coins")):
        scene = f"A{s + 1:04d}"
        pristine = photo(name, size)
        Image.fromarray(pristine).save(root / f"{scene}.bmp")
        for i in range(per_scene):
            noise = rng.normal(0, 4 + 6 * i, pristine.shape)
            restored = np.clip(pristine + noise, 0, 255).astype(np.uint8)
            Image.fromarray(restored).save(root / f"{scene}_00_{i:02d}.bmp")
            Image.fromarray(np.clip(pristine + 2 * noise, 0, 255).astype(np.uint8)).save(root / f"ref_{scene}_00_{i:02d}.bmp")
            (val_lines if s == 5 else lines).append(f"{scene}_00_{i:02d}.bmp,{1500 - 60 * i + s}")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "val.txt").write_text("\n".join(val_lines) + "\n")
    return root


def _data_overrides(config: str, tmp_path: Path) -> list[str]:
    cfg = load_config(REPO / "recipes" / "configs" / config,
                      ["data.root=/x", "data.list_file=l.txt"] if "pipal" in config else [])
    if cfg.data.kind == "pipal":
        per_scene = max(5, -(-2 * cfg.loader.batch_size // 5))  # 2 processes, drop_last: one full global batch
        return [f"data.root={_tiny_pipal(tmp_path / 'pipal', cfg.data.crop, per_scene)}"]
    return []


@pytest.mark.parametrize("launcher", sorted(CPU_LAUNCHERS))
@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_recipe_runs_and_exports_loadable_weights(launcher: str, config: str, tmp_path: Path) -> None:
    import subprocess

    out = tmp_path / "run"
    cmd = [*_accelerate(), "--config_file", f"recipes/accelerate/{launcher}", "--num_processes", "2",
           "--main_process_port", str(_free_port()), "-m", "drqa_plugin.train",
           "--config", f"recipes/configs/{config}", "max_steps=2", f"output_dir={out}",
           *_data_overrides(config, tmp_path)]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(CPU_LAUNCHERS[launcher]), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["distributed_type"] == EXPECTED_TYPE[launcher] and summary["num_processes"] == 2
    assert summary["steps"] == 2 and summary["ranks_identical"]
    shipped = load_config(REPO / "recipes" / "configs" / config,
                          ["data.root=/x", "data.list_file=l.txt"] if "pipal" in config else [])
    assert summary["config"]["model"]["channels_last"] == shipped.model.channels_last  # the default, untouched
    model = dq.load_model(out / "model.safetensors")
    assert isinstance(model, dq.CKDN)


def test_quality_gpu_script_end_to_end_on_cpu(tmp_path: Path) -> None:
    """benchmarks/quality_gpu.sh as a user runs it, on CPU: sharded bank, the shipped GPU recipe, fp16 weights.

    Only the device, the bank's size (data) and the step count are changed; the launchers and the
    recipe are the shipped ones.
    """
    import os
    import subprocess
    import sys

    res, run = tmp_path / "results", tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(PYTHON=sys.executable, RESULTS=str(res), BANK=str(tmp_path / "bank"), RUN=str(run), DEVICE="cpu",
               BANK_PROCESSES="2", TRAIN_OVERRIDES="max_steps=2",
               BANK_ARGS="--labeller ssim --combine rank --crop 320 --crops-per-photo 1 --inputs-per-task 2 "
                         "--restorer bicubic --restorer median --val-photo rocket")
    proc = subprocess.run(["bash", "benchmarks/quality_gpu.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    log = (res / "quality_gpu.log").read_text() if (res / "quality_gpu.log").is_file() else ""
    assert proc.returncode == 0, f"{log}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert "sharded build failed" not in log  # the 2-process bank worked, no fallback
    bank = json.loads((res / "bank_summary.json").read_text())
    assert bank["config"]["inputs_per_task"] == 2 and bank["counts"]["photos"] == 12  # chelsea, coins < 320 px
    summary = json.loads((res / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["data"]["crop"] == 288
    assert summary["mixed_precision"] == "bf16"  # recipes/accelerate/single_gpu.yaml, as shipped
    model = dq.load_model(run / "model.safetensors")
    assert isinstance(model, dq.CKDN)
    assert {"metrics.csv", "train.log", "bank.log", "model_fp16.safetensors"} <= {p.name for p in res.iterdir()}
    assert len(list(res.iterdir())) <= 8  # what a device call brings back
