"""Real `accelerate launch` runs of the trainer on CPU: DDP (2 processes, gloo), DeepSpeed ZeRO-2
through the shipped recipe files, resume, a simulated two-node launch, a killed rank, and the
exported weights in the scorer. Each launch trains the tiny recipe (64 px crops, 6 steps, both
stages, a mid-epoch checkpoint at step 3) on scikit-image's photos with the synthetic pipeline.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.slow  # every test here launches processes

REPO = Path(__file__).resolve().parents[1]
TINY = "recipes/configs/test_tiny.yaml"
# DDP and ZeRO-2 run the same fp32 SGD on the same data; they may differ only by the order of the
# floating-point reductions. Measured: bit-identical after 6 steps on this machine.
DDP_VS_ZERO_ATOL = 1e-5
LAUNCH_TIMEOUT = 300


def _accelerate() -> list[str]:
    exe = Path(sys.executable).with_name("accelerate")
    return [str(exe), "launch"] if exe.is_file() else [sys.executable, "-m", "accelerate.commands.launch"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(cpu_ddp: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false")
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    if cpu_ddp:
        env["ACCELERATE_USE_CPU"] = "1"
    return env


def launch(launch_args: list[str], overrides: list[str], cpu_ddp: bool = True, check: bool = True,
           timeout: int = LAUNCH_TIMEOUT) -> subprocess.CompletedProcess:
    cmd = [*_accelerate(), *launch_args, "-m", "drqa_plugin.train", "--config", TINY, *overrides]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(cpu_ddp), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def ddp_args() -> list[str]:
    # An explicit config file also keeps a user's default Accelerate config out of the test.
    return ["--config_file", "recipes/accelerate/cpu_2proc.yaml", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", str(_free_port())]


def zero2_args() -> list[str]:
    return ["--config_file", "recipes/accelerate/deepspeed_zero2.yaml", "--num_processes", "2",
            "--main_process_port", str(_free_port())]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def resume_copy(src: Path, dst: Path, step: int) -> Path:
    """A fresh output dir holding only the mid-run checkpoint of ``src`` (as after a crash)."""
    ckpt = dst / "checkpoints" / f"step_{step:08d}"
    shutil.copytree(src / "checkpoints" / f"step_{step:08d}", ckpt)
    return ckpt


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    launch(ddp_args(), [f"output_dir={out}"])
    return out


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2")
    launch(zero2_args(), [f"output_dir={out}"], cpu_ddp=False)
    return out


def test_ddp_two_processes_stay_identical(ddp_run: Path) -> None:
    s = summary(ddp_run)
    assert (s["distributed_type"], s["num_processes"], s["steps"]) == ("MULTI_CPU", 2, 6)
    assert len(s["rank_fingerprints"]) == 2 and s["ranks_identical"], s["rank_fingerprints"]
    # Both stages ran and every loss term was logged at its stage.
    rows = list(csv.DictReader((ddp_run / "metrics.csv").open()))
    train = [r for r in rows if r["split"] == "train"]
    assert [int(r["step"]) for r in train] == [1, 2, 3, 4, 5, 6]
    assert all(r["stage"] == "1" and r["d3"] and not r["d1"] for r in train[:3])
    assert all(r["stage"] == "2" and r["d1"] and r["d2"] and r["d4"] and not r["d3"] for r in train[3:])
    assert [int(r["step"]) for r in rows if r["split"] == "val"] == [4, 6]  # epoch end + end of run
    # gather_for_metrics: 8 val pairs on 2 processes, no duplicates.
    assert len((ddp_run / "predictions.csv").read_text().splitlines()) == 1 + 8
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]


def test_stage_unused_parameters_do_not_move(ddp_run: Path) -> None:
    """Stage 1 (steps 1-3) must leave the stage-2 branches at their initial values; stage 2 (steps 4-6)
    must leave the ranking branch where stage 1 left it (no weight decay, no stale momentum, no BN drift)."""
    from accelerate.utils import set_seed

    from drqa_plugin import create_model

    set_seed(42)  # the trainer builds its model right after set_seed(cfg.seed)
    init = create_model("ckdn_r50").state_dict()
    s3 = load_file(str(ddp_run / "checkpoints" / "step_00000003" / "model.safetensors"))
    s6 = load_file(str(ddp_run / "checkpoints" / "step_00000006" / "model.safetensors"))
    ref = [k for k in s3 if k.startswith(("comparator.", "head.", "reference_encoder."))]
    nr = [k for k in s3 if k.startswith(("nr_comparator.", "nr_head."))]
    assert ref and all(torch.equal(s3[k], init[k]) for k in ref), "a stage-2 branch moved in stage 1"
    assert nr and all(torch.equal(s3[k], s6[k]) for k in nr), "the ranking branch moved in stage 2"
    assert any(not torch.equal(init[k], s3[k]) for k in nr), "stage 1 did not train the ranking branch"
    assert any(not torch.equal(s3[k], s6[k]) for k in ref), "stage 2 did not train the reference branches"


def test_ddp_resume_reproduces_uninterrupted_run(ddp_run: Path, tmp_path: Path) -> None:
    resume_copy(ddp_run, tmp_path, step=3)  # mid-epoch (4 steps per epoch), last step of stage 1
    proc = launch(ddp_args(), [f"output_dir={tmp_path}", "resume=latest"])
    assert "resumed from" in proc.stdout and "at step 3" in proc.stdout
    assert summary(tmp_path)["steps"] == 6
    assert max_diff(weights(ddp_run), weights(tmp_path)) == 0.0


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(ddp_run: Path) -> None:
    before = sorted(p.name for p in (ddp_run / "checkpoints").iterdir())
    proc = subprocess.run([sys.executable, "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={ddp_run}"],
                          cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "resume=latest" in proc.stderr and "overwrite=true" in proc.stderr
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == before


def test_deepspeed_zero2_matches_ddp(zero2_run: Path, ddp_run: Path) -> None:
    s = summary(zero2_run)
    # A misconfigured launch silently falls back to DDP or to duplicated single-process runs.
    assert (s["distributed_type"], s["num_processes"], s["steps"]) == ("DEEPSPEED", 2, 6)
    assert s["ranks_identical"], s["rank_fingerprints"]
    assert s["deepspeed_autocast"] is False  # runtime.mixed_precision=no in the tiny recipe turns it off
    assert max_diff(weights(ddp_run), weights(zero2_run)) <= DDP_VS_ZERO_ATOL


def test_deepspeed_zero2_resume(zero2_run: Path, tmp_path: Path) -> None:
    ckpt = resume_copy(zero2_run, tmp_path, step=3)
    launch(zero2_args(), [f"output_dir={tmp_path}", f"resume={ckpt}"], cpu_ddp=False)
    assert summary(tmp_path)["distributed_type"] == "DEEPSPEED"
    assert max_diff(weights(zero2_run), weights(tmp_path)) <= DDP_VS_ZERO_ATOL


def test_simulated_two_node_launch(tmp_path: Path) -> None:
    port = _free_port()
    procs = []
    for rank in (0, 1):
        cmd = [*_accelerate(), "--config_file", "recipes/accelerate/cpu_2proc.yaml", "--multi_gpu",
               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={tmp_path}", "max_steps=3",
               "checkpoint_every=0"]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(True), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=LAUNCH_TIMEOUT)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    s = summary(tmp_path)
    assert (s["distributed_type"], s["num_processes"], s["steps"]) == ("MULTI_CPU", 2, 3)
    assert s["ranks_identical"]


def test_exported_weights_give_the_trainers_scores_in_the_scorer(ddp_run: Path) -> None:
    from drqa_plugin.data import build_dataset
    from drqa_plugin.scorer import DRIQA
    from drqa_plugin.train.config import load_config
    from drqa_plugin.weights import read_metadata

    meta = read_metadata(ddp_run / "model.safetensors")
    assert "trained by drqa_plugin.train" in meta["provenance"] and meta["arch"] == "ckdn_r50"
    cfg = load_config(ddp_run / "config.yaml")
    val = build_dataset(cfg.data, split="val")
    rows = {r["name"]: float(r["score"]) for r in csv.DictReader((ddp_run / "predictions.csv").open())}
    items = [val[i] for i in range(len(val))]
    assert sorted(rows) == sorted(it["name"] for it in items)
    scorer = DRIQA(ddp_run / "model.safetensors", preprocess="none")
    got = scorer([it["restored"] for it in items], [it["degraded"] for it in items])
    want = torch.tensor([rows[it["name"]] for it in items])
    assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_single_process_bf16_with_accumulation_and_clipping(tmp_path: Path) -> None:
    """No launcher at all; bf16 autocast, 2 micro-batches per optimiser step, clipping, cosine schedule."""
    cmd = [sys.executable, "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={tmp_path}",
           "runtime.mixed_precision=bf16", "runtime.grad_accum=2", "optim.clip_grad_norm=1.0",
           "optim.schedule=cosine", "max_steps=4", "checkpoint_every=0", "log.plots=true", "log.tensorboard=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = summary(tmp_path)
    assert (s["distributed_type"], s["num_processes"], s["mixed_precision"], s["steps"]) == ("NO", 1, "bf16", 4)
    rows = [r for r in csv.DictReader((tmp_path / "metrics.csv").open()) if r["split"] == "train"]
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert [float(r["lr"]) for r in rows] == sorted((float(r["lr"]) for r in rows), reverse=True)
    assert all(torch.isfinite(torch.tensor(float(r["loss"]))) for r in rows)
    # 8 batches of 2 per epoch = 4 optimiser steps: the epoch ended exactly at the last step.
    assert json.loads(next((tmp_path / "checkpoints").iterdir()).joinpath("trainer_state.json").read_text())["epoch"] == 1
    assert (tmp_path / "plots" / "losses.png").is_file() and (tmp_path / "plots" / "scatter.png").is_file()
    assert any((tmp_path / "tensorboard").iterdir())


def test_empty_data_fails_fast_with_a_clear_error(tmp_path: Path) -> None:
    empty = tmp_path / "photos"
    empty.mkdir()
    t0 = time.perf_counter()
    proc = launch(ddp_args(), [f"output_dir={tmp_path / 'run'}", f"data.root={empty}"], check=False, timeout=120)
    assert proc.returncode != 0
    assert str(empty) in proc.stderr and ("no" in proc.stderr.lower() or "empty" in proc.stderr.lower())
    assert time.perf_counter() - t0 < 120


def test_a_killed_rank_ends_the_run_instead_of_hanging(tmp_path: Path) -> None:
    cmd = [*_accelerate(), *ddp_args(), "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={tmp_path}",
           "max_steps=400", "checkpoint_every=0"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(True), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        metrics = tmp_path / "metrics.csv"
        deadline = time.time() + 120
        while time.time() < deadline and (not metrics.is_file() or len(metrics.read_text().splitlines()) < 3):
            time.sleep(0.5)
        assert metrics.is_file(), "training did not start"
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(workers[-1], signal.SIGKILL)
        out, _ = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert "SIGKILL" in out or "Signal 9" in out or "failed" in out.lower(), out[-2000:]


def _children(pid: int) -> list[int]:
    """Worker processes started by the launcher (its direct children that run the trainer)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and "drqa_plugin.train" in cmdline:
            found.append(int(entry.name))
    return sorted(found)
