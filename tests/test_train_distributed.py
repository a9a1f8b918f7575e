"""Real `accelerate launch` runs of the trainer on CPU: DDP (2 processes, gloo), DeepSpeed ZeRO-1 and
ZeRO-2 through the shipped recipe files, resume (also with DataLoader workers), DeepSpeed's "auto"
fields, refusals, a simulated two-node launch, a killed rank, checkpoint pruning, model_best, and the
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
LAUNCH_TIMEOUT = 300
# 7 validation pairs on 2 processes x eval batch 4 = 8 slots: Accelerate pads the last batch with a
# repeated sample, which gather_for_metrics must drop (8 would divide evenly and test nothing).
VAL_SAMPLES = 7
RUN = [f"data.val_samples={VAL_SAMPLES}"]
# DDP and ZeRO-1/2 run the same fp32 SGD on the same data. Measured: bit-identical after 6 steps
# (grad_accum 1), so those runs are compared with torch.equal. With grad_accum 2 the accumulated
# gradients are summed in another order: with clipping at 0.05 ZeRO-2 and DDP differ by 2.1e-4 after
# 4 steps, while a ZeRO-2 run without DeepSpeed's clipping is 0.36 away from the clipped DDP run.
CLIPPED_DDP_VS_ZERO_ATOL = 1e-3
CLIP = 0.05  # below every measured gradient norm of the tiny recipe (0.47-234), so every step is clipped


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


def zero_args(stage: int = 2, processes: int = 2) -> list[str]:
    return ["--config_file", f"recipes/accelerate/deepspeed_zero{stage}.yaml", "--num_processes", str(processes),
            "--main_process_port", str(_free_port())]


def zero2_args() -> list[str]:
    return zero_args(2)


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model.safetensors"))


def checkpoint_weights(run: Path, step: int) -> dict[str, torch.Tensor]:
    """The weights (and BatchNorm buffers) a checkpoint holds, for DDP and DeepSpeed checkpoints alike."""
    folder = run / "checkpoints" / f"step_{step:08d}"
    if (folder / "model.safetensors").is_file():  # Accelerate's save_state
        return load_file(str(folder / "model.safetensors"))
    # DeepSpeed's engine checkpoint: ZeRO-1/2 keep the whole fp32 module on every rank.
    states = torch.load(folder / "pytorch_model" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
    return dict(states["module"])


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def assert_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ (e.g. {different[:3]}), max |diff| {max_diff(a, b):.3g}"


def train_rows(run: Path) -> list[dict[str, str]]:
    return [r for r in csv.DictReader((run / "metrics.csv").open()) if r["split"] == "train"]


def check_predictions(run: Path) -> None:
    """gather_for_metrics: exactly the validation set, each pair once (the padding slot dropped)."""
    from drqa_plugin.data import build_dataset
    from drqa_plugin.train.config import load_config

    names = [r["name"] for r in csv.DictReader((run / "predictions.csv").open())]
    val = build_dataset(load_config(run / "config.yaml").data, split="val")
    assert len(names) == VAL_SAMPLES and len(set(names)) == VAL_SAMPLES, names
    assert sorted(names) == sorted(val[i]["name"] for i in range(len(val)))
    val_rows = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["split"] == "val"]
    assert val_rows and all(int(r["n"]) == VAL_SAMPLES for r in val_rows)


def resume_copy(src: Path, dst: Path, step: int) -> Path:
    """A fresh output dir holding only the mid-run checkpoint of ``src`` (as after a crash)."""
    ckpt = dst / "checkpoints" / f"step_{step:08d}"
    shutil.copytree(src / "checkpoints" / f"step_{step:08d}", ckpt)
    return ckpt


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp")
    launch(ddp_args(), [f"output_dir={out}", *RUN])
    return out


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2")
    launch(zero_args(2), [f"output_dir={out}", *RUN], cpu_ddp=False)
    return out


@pytest.fixture(scope="module")
def zero1_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero1")
    launch(zero_args(1), [f"output_dir={out}", *RUN], cpu_ddp=False)
    return out


# Clipping and 2 micro-batches per optimiser step (2 steps per epoch); the DDP run also loads data in
# 2 DataLoader worker processes per rank and keeps 3 checkpoints of one per step.
CLIPPED = [*RUN, f"optim.clip_grad_norm={CLIP}", "runtime.grad_accum=2", "max_steps=4"]
WORKERS = ["loader.num_workers=2", "checkpoint_every=1", "keep_checkpoints=3"]


@pytest.fixture(scope="module")
def clipped_ddp_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp_clipped")
    launch(ddp_args(), [f"output_dir={out}", *CLIPPED, *WORKERS])
    return out


@pytest.fixture(scope="module")
def clipped_zero2_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("zero2_clipped")
    launch(zero_args(2), [f"output_dir={out}", *CLIPPED, "checkpoint_every=0"], cpu_ddp=False)
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
    check_predictions(ddp_run)
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["step_00000003", "step_00000006"]
    assert s["train_compute_dtype"] == "torch.float32" and s["deepspeed"] is None


@pytest.mark.parametrize("run_fixture", ["ddp_run", "zero2_run", "zero1_run"])
def test_stage_unused_parameters_do_not_move(run_fixture: str, request: pytest.FixtureRequest) -> None:
    """Stage 1 (steps 1-3) must leave the stage-2 branches at their initial values; stage 2 (steps 4-6)
    must leave the ranking branch where stage 1 left it (no weight decay, no stale momentum, no BN drift).
    Under DDP unused gradients are None and SGD skips them anyway; under ZeRO they are zeros, and only the
    per-stage learning-rate mask (optim.set_lr) keeps weight decay and momentum from moving them."""
    from accelerate.utils import set_seed

    from drqa_plugin import create_model

    run = request.getfixturevalue(run_fixture)
    set_seed(42)  # the trainer builds its model right after set_seed(cfg.seed)
    init = create_model("ckdn_r50").state_dict()
    s3, s6 = checkpoint_weights(run, 3), checkpoint_weights(run, 6)
    ref = [k for k in s3 if k.startswith(("comparator.", "head.", "reference_encoder."))]
    nr = [k for k in s3 if k.startswith(("nr_comparator.", "nr_head."))]
    assert ref and all(torch.equal(s3[k], init[k]) for k in ref), "a stage-2 branch moved in stage 1"
    assert nr and all(torch.equal(s3[k], s6[k]) for k in nr), "the ranking branch moved in stage 2"
    assert any(not torch.equal(init[k], s3[k]) for k in nr), "stage 1 did not train the ranking branch"
    assert any(not torch.equal(s3[k], s6[k]) for k in ref), "stage 2 did not train the reference branches"


def test_ddp_resume_reproduces_uninterrupted_run(ddp_run: Path, tmp_path: Path) -> None:
    ckpt = resume_copy(ddp_run, tmp_path, step=3)  # mid-epoch (4 steps per epoch), last step of stage 1
    proc = launch(ddp_args(), [f"output_dir={tmp_path}", "resume=latest", *RUN])
    assert f"resumed from {ckpt} at step 3 (epoch 0, batch 3)" in proc.stdout
    s = summary(tmp_path)
    assert (s["distributed_type"], s["steps"]) == ("MULTI_CPU", 6)
    assert [int(r["step"]) for r in train_rows(tmp_path)] == [4, 5, 6]  # the resumed run trained steps 4-6 itself
    assert_identical(weights(ddp_run), weights(tmp_path))


def test_a_fresh_run_refuses_an_output_dir_with_checkpoints(ddp_run: Path) -> None:
    before = sorted(p.name for p in (ddp_run / "checkpoints").iterdir())
    proc = subprocess.run([sys.executable, "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={ddp_run}"],
                          cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert (f"error: {ddp_run / 'checkpoints'} holds checkpoints of an earlier run: continue it with resume=latest, "
            "or start over with overwrite=true (deletes them), or choose another output_dir") in proc.stderr
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == before


@pytest.mark.parametrize("run_fixture, stage", [("zero2_run", 2), ("zero1_run", 1)])
def test_deepspeed_matches_ddp(run_fixture: str, stage: int, ddp_run: Path, request: pytest.FixtureRequest) -> None:
    run = request.getfixturevalue(run_fixture)
    s = summary(run)
    # A misconfigured launch silently falls back to DDP or to duplicated single-process runs.
    assert (s["distributed_type"], s["num_processes"], s["steps"]) == ("DEEPSPEED", 2, 6)
    assert s["deepspeed"]["zero_stage"] == stage  # what the engine runs, not what the file says
    assert s["ranks_identical"], s["rank_fingerprints"]
    # runtime.mixed_precision=no in the tiny recipe turns the recipe's torch_autocast off
    assert s["deepspeed_autocast"] is False and s["train_compute_dtype"] == "torch.float32"
    check_predictions(run)
    assert_identical(weights(ddp_run), weights(run))
    assert_identical(checkpoint_weights(ddp_run, 3), checkpoint_weights(run, 3))


def test_deepspeed_zero2_resume(zero2_run: Path, tmp_path: Path) -> None:
    ckpt = resume_copy(zero2_run, tmp_path, step=3)
    proc = launch(zero2_args(), [f"output_dir={tmp_path}", f"resume={ckpt}", *RUN], cpu_ddp=False)
    assert f"resumed from {ckpt} at step 3 (epoch 0, batch 3)" in proc.stdout
    s = summary(tmp_path)
    assert (s["distributed_type"], s["deepspeed"]["zero_stage"], s["steps"]) == ("DEEPSPEED", 2, 6)
    assert [int(r["step"]) for r in train_rows(tmp_path)] == [4, 5, 6]
    assert_identical(weights(zero2_run), weights(tmp_path))


def test_zero_checkpoint_refuses_another_world_size(zero2_run: Path, tmp_path: Path) -> None:
    ckpt = resume_copy(zero2_run, tmp_path, step=3)
    proc = launch(zero_args(2, processes=1), [f"output_dir={tmp_path}", "resume=latest", *RUN], cpu_ddp=False,
                  check=False)
    assert proc.returncode != 0
    assert (f"error: {ckpt} was written by 2 DeepSpeed processes; ZeRO checkpoints only resume on the same "
            "world size (now 1)") in proc.stderr
    assert not (tmp_path / "model.safetensors").exists()


def test_simulated_two_node_launch(tmp_path: Path) -> None:
    port = _free_port()
    procs = []
    for rank in (0, 1):
        cmd = [*_accelerate(), "--config_file", "recipes/accelerate/cpu_2proc.yaml", "--multi_gpu",
               "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(rank),
               "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={tmp_path}", "max_steps=3",
               "checkpoint_every=0", *RUN]
        procs.append(subprocess.Popen(cmd, cwd=REPO, env=_env(True), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))
    try:
        outputs = [p.communicate(timeout=LAUNCH_TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    s = summary(tmp_path)
    assert (s["distributed_type"], s["num_processes"], s["steps"]) == ("MULTI_CPU", 2, 3)
    assert s["ranks_identical"]
    check_predictions(tmp_path)


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
           "runtime.mixed_precision=bf16", "runtime.grad_accum=2", f"optim.clip_grad_norm={CLIP}",
           "optim.schedule=cosine", "max_steps=4", "checkpoint_every=0", "log.plots=true", "log.tensorboard=true"]
    proc = subprocess.run(cmd, cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = summary(tmp_path)
    assert (s["distributed_type"], s["num_processes"], s["mixed_precision"], s["steps"]) == ("NO", 1, "bf16", 4)
    # What autocast did, seen in the network: the convolutions computed in bf16 (fp32 runs record float32).
    assert s["train_compute_dtype"] == "torch.bfloat16"
    rows = train_rows(tmp_path)
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    # Every step's gradient was larger than the limit and was clipped to it.
    norms = [(float(r["grad_norm"]), float(r["grad_norm_clipped"])) for r in rows]
    assert all(before > CLIP and after <= CLIP * (1 + 1e-4) for before, after in norms), norms
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
    # Every rank says it, before any collective (a rank waiting in one would hang until the timeout).
    message = f"error: photo folder {str(empty)!r} has no image files (looked for "
    assert proc.stderr.count(message) == 2, proc.stderr[-3000:]
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
    # torch.distributed.elastic's failure report names the killed worker and the signal.
    assert f"Signal 9 (SIGKILL) received by PID {workers[-1]}" in out, out[-2000:]


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


# ----------------------------------------------------------------------------- promised behaviour


def test_max_steps_0_trains_the_schedules_epochs_and_overwrite_starts_over(tmp_path: Path) -> None:
    """max_steps=0 means schedule.epochs full epochs; a fresh run with overwrite=true deletes the old checkpoints."""
    def train(*overrides: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "drqa_plugin.train", "--config", TINY, f"output_dir={tmp_path}", *RUN, *overrides]
        return subprocess.run(cmd, cwd=REPO, env=_env(False), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)

    proc = train("max_steps=0", "schedule.epochs=1", "checkpoint_every=0")
    assert proc.returncode == 0, proc.stderr[-4000:]
    s = summary(tmp_path)
    # one process, 16 samples, batch 2: 8 optimiser steps per epoch
    assert (s["steps"], s["epochs_completed"]) == (8, 1)
    assert "8 steps/epoch | 8 steps |" in proc.stdout
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000008"]
    proc = train("max_steps=2", "checkpoint_every=0", "overwrite=true")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert summary(tmp_path)["steps"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_00000002"]
    assert [int(r["step"]) for r in train_rows(tmp_path)] == [1, 2]  # a new log, not the old run's


def test_dataloader_workers_resume_equals_the_uninterrupted_run(clipped_ddp_run: Path, tmp_path: Path) -> None:
    s = summary(clipped_ddp_run)
    assert (s["steps"], s["epochs_completed"], s["config"]["loader"]["num_workers"]) == (4, 2, 2)
    ckpt = resume_copy(clipped_ddp_run, tmp_path, step=3)  # mid-epoch: 2 optimiser steps per epoch
    proc = launch(ddp_args(), [f"output_dir={tmp_path}", "resume=latest", *CLIPPED, *WORKERS])
    assert f"resumed from {ckpt} at step 3 (epoch 1, batch 2)" in proc.stdout
    assert [int(r["step"]) for r in train_rows(tmp_path)] == [4]
    assert_identical(weights(clipped_ddp_run), weights(tmp_path))


def test_keep_checkpoints_prunes_the_oldest(clipped_ddp_run: Path) -> None:
    # checkpoint_every=1 wrote steps 1, 2, 3 and the final 4; keep_checkpoints=3 left the newest three.
    assert sorted(p.name for p in (clipped_ddp_run / "checkpoints").iterdir()) == [
        "step_00000002", "step_00000003", "step_00000004"]


def test_model_best_is_the_best_evaluation_and_loads(clipped_ddp_run: Path) -> None:
    import drqa_plugin as dq

    run = clipped_ddp_run
    val = [r for r in csv.DictReader((run / "metrics.csv").open()) if r["split"] == "val"]
    assert [int(r["step"]) for r in val] == [2, 4]  # the two epoch ends
    scores = [float(r["srcc"]) + float(r["plcc"]) for r in val]
    best = val[scores.index(max(scores))]  # the first of equal scores: only a strictly better one replaces it
    s = summary(run)
    assert s["best_step"] == int(best["step"]) and s["best_score"] == pytest.approx(max(scores), abs=2e-6)
    path = run / "model_best.safetensors"
    assert f"(best val SRCC+PLCC) at step {s['best_step']}" in dq.read_metadata(path)["provenance"]
    assert_identical(load_file(str(path)), checkpoint_weights(run, s["best_step"]))
    model = dq.load_model(path)
    assert_identical(load_file(str(path)), model.state_dict())


def test_deepspeed_fills_its_auto_clipping_and_accumulation(clipped_zero2_run: Path, clipped_ddp_run: Path) -> None:
    s = summary(clipped_zero2_run)
    assert s["deepspeed"] == {"zero_stage": 2, "gradient_clipping": CLIP, "gradient_accumulation_steps": 2,
                              "train_batch_size": 8, "train_micro_batch_size_per_gpu": 2}
    assert (s["steps"], s["epochs_completed"]) == (4, 2)  # 4 micro-batches per rank and epoch -> 2 steps
    # DeepSpeed reports the norm it clipped from: always above the limit here.
    assert all(float(r["grad_norm"]) > CLIP for r in train_rows(clipped_zero2_run))
    # The same training as the DDP run, where the trainer clips and accumulates itself.
    assert max_diff(weights(clipped_ddp_run), weights(clipped_zero2_run)) <= CLIPPED_DDP_VS_ZERO_ATOL
