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


def _tiny_pipal(root: Path, crop: int) -> Path:
    """A PIPAL-layout folder whose images are just large enough for the recipe's crop."""
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
        for i in range(5):
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
        return [f"data.root={_tiny_pipal(tmp_path / 'pipal', cfg.data.crop)}"]
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
