"""Trainer pieces without launching: config loading, every shipped recipe, losses, optimiser groups,
the stage learning-rate mask and checkpoint bookkeeping."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from drqa_plugin.train.checkpoint import TrainerState, list_checkpoints, resolve_resume
from drqa_plugin.config import parse_override
from drqa_plugin.train.config import ConfigError, LossConfig, ScheduleConfig, TrainConfig, load_config
from drqa_plugin.train.logs import MetricsLog, read_metrics
from drqa_plugin.train.losses import distillation_loss, ranking_target, stage_at, stage_paths, stage_terms
from drqa_plugin.models.ckdn import TrainOutputs

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"


# ----------------------------------------------------------------------------- config


def test_overrides_are_typed_and_dotted(tmp_path: Path) -> None:
    cfg = load_config(RECIPES / "configs" / "demo.yaml",
                      ["max_steps=20", "output_dir=runs/x", "data.root=/data/photos", "optim.lr=1e-3",
                       "resume=latest", "runtime.mixed_precision=bf16", "data.degradation.scale_range=[2, 3]"])
    assert cfg.max_steps == 20 and cfg.output_dir == "runs/x" and cfg.resume == "latest"
    assert cfg.data.root == "/data/photos" and cfg.optim.lr == pytest.approx(1e-3)
    assert cfg.runtime.mixed_precision == "bf16" and cfg.data.degradation.scale_range == (2.0, 3.0)
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # int accepted for a float field
    assert parse_override("resume=null") == ("resume", None)


@pytest.mark.parametrize(
    "override, message",
    [
        ("max_step=3", "max_step"),  # typo of a top-level key
        ("optim.nesterv=true", "optim.nesterv"),  # typo inside a section
        ("max_steps=abc", "max_steps must be int"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("runtime.mixed_precision=fp8", "mixed_precision"),
        ("schedule.unit=hours", "schedule.unit"),
        ("data.kind=imagenet", "data.kind"),
        ("max_steps", "key=value"),
        ("max_steps.x=1", "is a value"),
        ("loss.ranking_stage2=-0.5", "loss.ranking_stage2 must be >= 0"),
        ("loader.start_method=thread", "loader.start_method must be forkserver|spawn|fork"),
        ("loader.num_workers=-1", "loader.num_workers must be >= 0"),
    ],
)
def test_bad_config_values_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(RECIPES / "configs" / "test_tiny.yaml", [override])


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


@pytest.mark.parametrize("name", sorted(p.name for p in (RECIPES / "configs").glob("*.yaml")))
def test_every_training_recipe_loads(name: str) -> None:
    raw = yaml.safe_load((RECIPES / "configs" / name).read_text())
    if raw.get("data", {}).get("kind") == "pipal":  # needs the dataset location, given at launch time
        cfg = load_config(RECIPES / "configs" / name, ["data.root=/data/PIPAL", "data.list_file=train.txt"])
    else:
        cfg = load_config(RECIPES / "configs" / name)
    assert isinstance(cfg, TrainConfig)


def test_paper_recipe_values() -> None:
    cfg = load_config(RECIPES / "configs" / "ckdn_pipal.yaml", ["data.root=/d", "data.list_file=l.txt"])
    o = cfg.optim
    assert (o.lr, o.momentum, o.nesterov, o.weight_decay, o.schedule) == (0.16, 0.9, True, 1e-4, "constant")
    assert (cfg.schedule.epochs, cfg.schedule.stage2_start, cfg.schedule.unit) == (30, 10, "epoch")
    assert (cfg.data.crop, cfg.loader.batch_size, cfg.loss.distill, cfg.loss.ranking) == (288, 8, 30.0, 0.5)
    assert cfg.runtime.sync_batchnorm is False


# ----------------------------------------------------------------------------- recipes


def _accelerate_recipes() -> list[Path]:
    return sorted((RECIPES / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", _accelerate_recipes(), ids=lambda p: p.name)
def test_accelerate_recipe_is_valid(path: Path) -> None:
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))  # rejects unknown keys
    raw = yaml.safe_load(path.read_text())
    assert cfg.num_processes == raw["num_processes"] >= 1
    if cfg.distributed_type.value == "DEEPSPEED":
        ds_file = REPO / cfg.deepspeed_config["deepspeed_config_file"]
        assert ds_file.is_file(), ds_file
        # Accelerate refuses mixed_precision next to a deepspeed_config_file.
        assert "mixed_precision" not in raw
    if cfg.num_machines > 1:
        assert cfg.num_processes % cfg.num_machines == 0


def test_all_expected_recipes_exist() -> None:
    names = {p.name for p in _accelerate_recipes()}
    assert names == {"cpu_2proc.yaml", "single_gpu.yaml", "multi_gpu_8.yaml", "multi_node_2x8.yaml",
                     "deepspeed_zero1.yaml", "deepspeed_zero2.yaml"}
    assert {p.name for p in (RECIPES / "deepspeed").glob("*.json")} == {"zero1.json", "zero2.json"}
    assert any((RECIPES / "slurm").iterdir())


KNOWN_DS_KEYS = {
    "train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "gradient_clipping",
    "bf16", "fp16", "torch_autocast", "zero_optimization", "zero_allow_untested_optimizer", "steps_per_print",
    "wall_clock_breakdown",
}


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_json_is_valid_after_filling_auto(stage: int) -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((RECIPES / "deepspeed" / f"zero{stage}.json").read_text())
    # DeepSpeed ignores unknown top-level keys and torch_autocast sub-keys: check those names here.
    assert set(raw) <= KNOWN_DS_KEYS, set(raw) - KNOWN_DS_KEYS
    assert set(raw["torch_autocast"]) <= {"enabled", "dtype", "lower_precision_safe_modules"}
    filled = {**raw, "train_batch_size": 16, "train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 2,
              "gradient_clipping": 1.0}
    assert "\"auto\"" not in json.dumps(filled)
    ds = DeepSpeedConfig(filled)
    assert ds.zero_optimization_stage == stage
    assert ds.torch_autocast_enabled and ds.torch_autocast_dtype == torch.bfloat16
    # Native bf16/fp16 would cast BatchNorm's buffers inconsistently: the recipes must keep them off.
    assert raw["bf16"]["enabled"] is False and raw["fp16"]["enabled"] is False


def test_deepspeed_validation_catches_a_typo() -> None:
    from deepspeed.runtime.config import DeepSpeedConfig

    raw = json.loads((RECIPES / "deepspeed" / "zero2.json").read_text())
    raw.update(train_batch_size=8, train_micro_batch_size_per_gpu=8, gradient_accumulation_steps=1,
               gradient_clipping=1.0)
    raw["zero_optimization"]["stag"] = 2
    # pydantic's ValidationError (a ValueError) naming the section and the key
    with pytest.raises(ValueError, match=r"DeepSpeedZeroConfig\nstag\n  Extra inputs are not permitted"):
        DeepSpeedConfig(raw)


# ----------------------------------------------------------------------------- losses and schedule


def test_ranking_target_is_the_elo_probability() -> None:
    t1, t2 = torch.tensor([0.2, 0.5, 0.1]), torch.tensor([0.3, 0.5, -0.2])
    want = 1 / (1 + 10 ** ((t1 - t2) * 1000 / 400))
    assert torch.allclose(ranking_target(t1, t2, 2.5), want, atol=1e-6)


def test_distillation_loss_terms_and_weights() -> None:
    n = 4
    dr, fr, nr, gap = torch.rand(n), torch.rand(n), torch.rand(n), torch.rand(n)
    t1, t2 = torch.rand(n), torch.rand(n)
    cfg = LossConfig()
    s1 = distillation_loss(TrainOutputs(None, None, nr, None), t1, t2, 1, cfg)
    t3 = 1 / (1 + 10 ** ((t1 - t2) * 2.5))
    assert set(s1.terms) == {"d3"} and torch.allclose(s1.total, 0.5 * ((nr - t3) ** 2).mean())
    s2 = distillation_loss(TrainOutputs(dr, fr, None, gap), t1, t2, 2, cfg)
    assert set(s2.terms) == {"d1", "d2", "d4"}
    want = ((dr - t1) ** 2).mean() + ((fr - t1) ** 2).mean() + 30 * (gap ** 2).mean()
    assert torch.allclose(s2.total, want)
    with pytest.raises(ValueError, match="stage 2 needs"):
        distillation_loss(TrainOutputs(None, None, nr, None), t1, t2, 2, cfg)


def test_ranking_term_can_stay_on_in_stage_2() -> None:
    n = 6
    dr, fr, nr, gap = torch.rand(n), torch.rand(n), torch.rand(n), torch.rand(n)
    t1, t2 = torch.rand(n), torch.rand(n)
    keep = LossConfig(ranking_stage2=0.25, rank_scale=5.0)
    assert stage_paths(2, keep) == ("dr", "fr", "gap", "nr") and stage_terms(2, keep) == ("d1", "d2", "d4", "d3")
    s2 = distillation_loss(TrainOutputs(dr, fr, nr, gap), t1, t2, 2, keep)
    assert set(s2.terms) == {"d1", "d2", "d4", "d3"}
    # The same ranking target as stage 1, with the stage-2 weight instead of loss.ranking.
    stage1 = distillation_loss(TrainOutputs(None, None, nr, None), t1, t2, 1, keep)
    assert torch.allclose(s2.terms["d3"], stage1.terms["d3"] * (0.25 / keep.ranking))
    paper = distillation_loss(TrainOutputs(dr, fr, None, gap), t1, t2, 2, LossConfig(rank_scale=5.0))
    assert torch.allclose(s2.total - paper.total, s2.terms["d3"], atol=1e-6)
    with pytest.raises(ValueError, match="d3 in stage 2 needs the 'nr' path"):
        distillation_loss(TrainOutputs(dr, fr, None, gap), t1, t2, 2, keep)


def test_mismatch_term_pulls_the_score_against_another_input_to_zero() -> None:
    n = 4
    dr, fr, gap, dr_x = torch.rand(n), torch.rand(n), torch.rand(n), torch.rand(n)
    t1, t2 = torch.rand(n), torch.rand(n)
    on = LossConfig(mismatch=0.5, ranking_stage2=0.1)
    assert stage_paths(2, on) == ("dr", "fr", "gap", "nr", "drx") and stage_terms(2, on) == ("d1", "d2", "d4", "d3", "d6")
    assert stage_paths(1, on) == ("nr",) and stage_terms(1, on) == ("d3",)
    s2 = distillation_loss(TrainOutputs(dr, fr, torch.rand(n), gap, None, dr_x), t1, t2, 2, on)
    assert torch.allclose(s2.terms["d6"], 0.5 * dr_x.pow(2).mean())
    with pytest.raises(ValueError, match="needs the 'drx' path"):
        distillation_loss(TrainOutputs(dr, fr, torch.rand(n), gap), t1, t2, 2, on)
    with pytest.raises(ConfigError, match="loss.mismatch must be >= 0"):
        load_config(None, ["loss.mismatch=-1"])


def test_pair_term_regresses_the_difference_of_two_restorations_of_one_input() -> None:
    n = 5
    dr, dr_2, fr, gap = torch.rand(n), torch.rand(n), torch.rand(n), torch.rand(n)
    t1, t2 = torch.rand(n), torch.rand(n)
    off = LossConfig()
    assert stage_paths(2, off) == ("dr", "fr", "gap") and stage_terms(2, off) == ("d1", "d2", "d4")
    on = LossConfig(pair=2.0)
    assert stage_paths(2, on) == ("dr", "fr", "gap", "dr2") and stage_paths(1, on) == ("nr",)
    s2 = distillation_loss(TrainOutputs(dr, fr, None, gap, dr_2), t1, t2, 2, on)
    assert set(s2.terms) == set(stage_terms(2, on)) == {"d1", "d2", "d4", "d5"}
    want_d5 = 2.0 * (((dr - dr_2) - (t1 - t2)) ** 2).mean()
    assert torch.allclose(s2.terms["d5"], want_d5)
    paper = distillation_loss(TrainOutputs(dr, fr, None, gap, dr_2), t1, t2, 2, off)
    assert torch.allclose(s2.total - paper.total, want_d5)
    # Scores that order the two restorations like their labels (same gap) cost nothing.
    assert float(distillation_loss(TrainOutputs(t1 + 0.1, fr, None, gap, t2 + 0.1), t1, t2, 2, on).terms["d5"]) < 1e-12
    with pytest.raises(ValueError, match="needs the 'dr2' path"):
        distillation_loss(TrainOutputs(dr, fr, None, gap), t1, t2, 2, on)
    with pytest.raises(ConfigError, match="loss.pair"):
        load_config(None, ["loss.pair=-1"])


def test_stage_boundary_in_epochs_or_steps() -> None:
    by_epoch = ScheduleConfig(stage2_start=10, unit="epoch")
    assert [stage_at(by_epoch, e, 10_000) for e in (0, 9, 10, 29)] == [1, 1, 2, 2]
    by_step = ScheduleConfig(stage2_start=3, unit="step")
    assert [stage_at(by_step, 5, s) for s in (0, 2, 3, 4)] == [1, 1, 2, 2]


def test_param_groups_split_decay_and_branches() -> None:
    from drqa_plugin import create_model
    from drqa_plugin.train.optim import make_optimizer, set_lr, stage_branches

    cfg = load_config(RECIPES / "configs" / "ckdn_pipal.yaml", ["data.root=/d", "data.list_file=l.txt"])
    model = create_model("ckdn_r50")
    opt = make_optimizer(model, cfg)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    for g in opt.param_groups:
        dims = {p.ndim for p in g["params"]}
        assert (min(dims) >= 2) if g["weight_decay"] else (max(dims) < 2)
        assert g["nesterov"] and g["momentum"] == 0.9
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 1e-4}
    paper = {1: {"shared", "ranking"}, 2: {"shared", "reference"}}  # the branches each stage trains
    for stage in (1, 2):
        assert stage_branches(stage, cfg.loss) == paper[stage]
        set_lr(opt, 0.16, stage_branches(stage, cfg.loss))
        for g in opt.param_groups:
            assert g["lr"] == (0.16 if g["branch"] in paper[stage] else 0.0)
    # d3 kept in stage 2 keeps its branch training there, and only there; d5 and d6 add no branch.
    keep = LossConfig(ranking_stage2=0.5)
    assert stage_branches(2, keep) == {"shared", "reference", "ranking"}
    assert stage_branches(1, keep) == paper[1]
    assert stage_branches(2, LossConfig(pair=1.0, mismatch=1.0)) == paper[2]


def test_zero_lr_groups_stay_put_even_with_zero_gradients() -> None:
    """What DeepSpeed ZeRO does to unused parameters (zero grads) must not move them."""
    from drqa_plugin import create_model
    from drqa_plugin.train.optim import clear_momentum, make_optimizer, set_lr

    cfg = load_config(RECIPES / "configs" / "test_tiny.yaml")
    model = create_model("ckdn_r50")
    opt = make_optimizer(model, cfg)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    set_lr(opt, 0.1, frozenset({"shared", "ranking"}))  # stage 1
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if not p.ndim else torch.full_like(p, 0.0)
    for name, p in model.named_parameters():
        if name.startswith("nr_"):
            p.grad = torch.ones_like(p)
    opt.step()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("comparator.", "head.", "reference_")))
    assert not torch.equal(before["nr_head.0.weight"], after["nr_head.0.weight"])
    clear_momentum(opt, frozenset({"ranking"}))
    bufs = [opt.state[p]["momentum_buffer"] for n, p in model.named_parameters() if n.startswith("nr_")]
    assert all(float(b.abs().sum()) == 0.0 for b in bufs)


# ----------------------------------------------------------------------------- checkpoints and logs


def test_resolve_resume(tmp_path: Path) -> None:
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("latest", tmp_path) is None  # nothing yet: a fresh start
    for step in (3, 12):
        folder = tmp_path / "checkpoints" / f"step_{step:08d}"
        folder.mkdir(parents=True)
        (folder / "trainer_state.json").write_text(json.dumps({"step": step}))
    (tmp_path / "checkpoints" / ".tmp-step_00000020").mkdir()  # an interrupted save is never picked
    (tmp_path / "checkpoints" / "step_00000030").mkdir()  # no state file: incomplete
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step_00000003", "step_00000012"]
    assert resolve_resume("latest", tmp_path).name == "step_00000012"
    assert TrainerState.read(resolve_resume("latest", tmp_path)).step == 12
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp_path / "checkpoints" / "step_00000030"), tmp_path)


def test_metrics_log_drops_rows_after_the_resumed_step(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path, tensorboard=False)
    for step in (1, 2, 3, 4):
        log.write({"split": "train", "step": step, "epoch": 0, "stage": 1, "loss": 0.5, "d3": 0.5})
    log.close()
    log = MetricsLog(tmp_path, tensorboard=False, keep_until_step=2)
    log.write({"split": "train", "step": 3, "epoch": 0, "stage": 2, "loss": 0.1, "d1": 0.1})
    log.close()
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [(r["step"], r["stage"]) for r in rows] == [("1", "1"), ("2", "1"), ("3", "2")]
    with pytest.raises(KeyError, match=r"metrics.csv has no column\(s\) \['bogus'\]"):
        MetricsLog(tmp_path / "x", tensorboard=False).write({"split": "train", "step": 1, "bogus": 1})


def test_cosine_and_warmup_schedule() -> None:
    from drqa_plugin.train.optim import base_lr

    cfg = load_config(None, ["optim.schedule=cosine", "optim.warmup_steps=2", "optim.lr=1.0"])
    lrs = [base_lr(cfg, s, 12) for s in range(12)]
    assert lrs[:2] == [0.5, 1.0] and lrs[2] == pytest.approx(1.0) and lrs[-1] < 0.05
    assert all(a >= b for a, b in zip(lrs[1:], lrs[2:]))
    assert math.isclose(base_lr(load_config(None), 100, 200), 0.16)


@pytest.mark.parametrize(
    "ds_config, overrides, message",
    [
        ("recipes/deepspeed/zero2.json", ["runtime.mixed_precision=fp16"],
         "error: fp16 with DeepSpeed is not supported for this BatchNorm model; use bf16 (torch_autocast)"),
        ({"bf16": {"enabled": True}}, [],
         "error: the DeepSpeed config enables native bf16/fp16, which breaks BatchNorm (fp32 buffers); "
         'use "torch_autocast": {"enabled": true, "dtype": "bfloat16"} as recipes/deepspeed/*.json do'),
        ({"fp16": {"enabled": "true"}}, ["runtime.mixed_precision=bf16"],
         "error: the DeepSpeed config enables native bf16/fp16, which breaks BatchNorm"),
    ],
    ids=["fp16", "native_bf16", "native_fp16"],
)
def test_deepspeed_refuses_fp16_and_native_half_precision(tmp_path, monkeypatch, capsys, ds_config, overrides,
                                                          message) -> None:
    """What `accelerate launch --config_file <a DeepSpeed YAML>` hands the trainer, in-process: refused with
    the reason before any process group, engine or output exists."""
    from drqa_plugin.train.__main__ import main

    if isinstance(ds_config, dict):
        raw = json.loads((RECIPES / "deepspeed" / "zero2.json").read_text())
        raw.pop("torch_autocast")
        raw.update(ds_config)
        path = tmp_path / "native.json"
        path.write_text(json.dumps(raw))
    else:
        path = REPO / ds_config
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", str(path))
    out = tmp_path / "run"
    code = main(["--config", str(RECIPES / "configs" / "test_tiny.yaml"), f"output_dir={out}",
                 "runtime.cpu_threads=0", *overrides])
    assert code == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_loader_workers_start_from_a_forkserver_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers of the trainer's loaders never fork the trainer itself (its gloo threads can hold an
    interpreter lock at that instant: the hang this guards against, seen with 2 gloo ranks), unless asked."""
    import multiprocessing

    from drqa_plugin.train.loaders import build_loaders, worker_context

    cfg = load_config(RECIPES / "configs" / "test_tiny.yaml", ["loader.num_workers=2", "data.val_samples=4"])
    assert cfg.loader.start_method == "forkserver"
    _, _, train, val, other = build_loaders(cfg)
    assert other is not None
    for loader in (train, val, other):
        assert loader.multiprocessing_context.get_start_method() == "forkserver"  # type: ignore[union-attr]
    batch = next(iter(train))  # a real forkserver worker made it
    assert batch["restored"].shape == (cfg.loader.batch_size, 3, cfg.data.crop, cfg.data.crop)
    assert worker_context("spawn").get_start_method() == "spawn"  # type: ignore[union-attr]
    assert build_loaders(load_config(RECIPES / "configs" / "test_tiny.yaml"))[2].multiprocessing_context is None
    # Where a method does not exist (forkserver on Windows) the platform's default is used.
    monkeypatch.setattr(multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    assert worker_context("forkserver") is None


def test_reference_check_dataset_swaps_only_the_degraded_crop_and_refuses_mixed_sizes() -> None:
    import torch

    from drqa_plugin.errors import TrainingError
    from drqa_plugin.train.loaders import OtherInputReferences, sample_groups

    class Counted(list):
        """A map-style dataset (a list) that counts the samples read."""

        reads: list[int] = []

        def __getitem__(self, index):  # type: ignore[override]
            self.reads.append(index)
            return super().__getitem__(index)

    samples = Counted({"restored": torch.full((3, 4, 4), float(i)), "degraded": torch.full((3, 4, 4), 10.0 + i),
                       "group": g, "target": torch.tensor(0.5)} for i, g in enumerate([0, 0, 1, 1, 1]))
    groups = sample_groups(samples)  # type: ignore[arg-type]  # no group_ids(): read from the samples
    assert groups == [0, 0, 1, 1, 1]
    swapped = OtherInputReferences(samples, groups)  # type: ignore[arg-type]
    Counted.reads.clear()
    # Group 0 takes the first pair of group 1 and vice versa; the restored crop and the label stay.
    assert [float(swapped[i]["degraded"][0, 0, 0]) for i in range(5)] == [12.0, 12.0, 10.0, 10.0, 10.0]
    assert [float(swapped[i]["restored"][0, 0, 0]) for i in range(5)] == [0.0, 1.0, 2.0, 3.0, 4.0]
    # Two passes read every sample twice as itself; each partner's crop (sample 2 for group 0, sample 0
    # for group 1) is read once more, not once per sample of its group and pass.
    assert {i: Counted.reads.count(i) for i in range(5)} == {0: 3, 1: 2, 2: 3, 3: 2, 4: 2}
    assert samples[0]["degraded"][0, 0, 0] == 10.0  # the wrapped samples are not modified
    samples[2]["degraded"] = torch.zeros(3, 5, 5)
    with pytest.raises(TrainingError, match="val crops of one size"):
        OtherInputReferences(samples, groups)[0]


def test_listwise_term_ranks_every_pair_of_restorations_of_one_input() -> None:
    from drqa_plugin.train.losses import listwise_loss

    scale = 5.0
    t = torch.tensor([0.2, 0.5, 0.9, 0.4, 0.1])
    groups = torch.tensor([0, 0, 0, 1, 1])
    s = torch.tensor([0.3, 0.2, 0.8, 0.6, 0.7])
    k = scale * math.log(10.0)
    want = []
    for i, j in ((0, 1), (0, 2), (1, 2), (3, 4)):  # pairs inside a group only
        p = 1 / (1 + math.exp(-(float(s[i] - s[j])) * k))  # the scores' Elo probability that i beats j
        q = 1 / (1 + math.exp(-(float(t[i] - t[j])) * k))  # the labels'
        want.append(q * math.log(q / p) + (1 - q) * math.log((1 - q) / (1 - p)))  # KL(q || p)
    assert float(listwise_loss(s, t, groups, scale)) == pytest.approx(sum(want) / len(want), rel=1e-5)
    # Scores with the labels' gaps (any offset per input) cost nothing; one group of one has no pairs.
    assert float(listwise_loss(t + groups * 0.3, t, groups, scale)) == pytest.approx(0.0, abs=1e-6)
    single = listwise_loss(s[:1].requires_grad_(), t[:1], groups[:1], scale)
    assert float(single.detach()) == 0.0 and single.requires_grad
    # The gradient raises the better restoration of a wrongly ordered pair and lowers the other.
    scores = torch.tensor([0.6, 0.4], requires_grad=True)
    listwise_loss(scores, torch.tensor([0.2, 0.8]), torch.tensor([3, 3]), scale).backward()
    assert scores.grad[0] > 0 > scores.grad[1]

    n = 5
    dr, fr, gap = torch.rand(n), torch.rand(n), torch.rand(n)
    on = LossConfig(listwise=2.0, rank_scale=scale)
    assert stage_terms(2, on) == ("d1", "d2", "d4", "d7") and stage_paths(2, on) == ("dr", "fr", "gap")
    assert stage_terms(1, on) == ("d3",)
    s2 = distillation_loss(TrainOutputs(dr, fr, None, gap), t, t.roll(-1), 2, on, group=groups)
    assert torch.allclose(s2.terms["d7"], 2.0 * listwise_loss(dr, t, groups, scale))
    with pytest.raises(ValueError, match="needs each sample's group"):
        distillation_loss(TrainOutputs(dr, fr, None, gap), t, t, 2, on)
    for overrides, match in ((["loss.listwise=-1"], "loss.listwise must be >= 0"),
                             (["loss.listwise_warmup=-1"], "loss.listwise_warmup must be >= 0"),
                             (["loss.listwise=1"], "set data.group_size >= 2"),
                             (["data.kind=pipal", "data.root=/d", "data.list_file=l.txt", "data.group_size=3",
                               "loader.batch_size=8"], "must be a multiple of data.group_size")):
        with pytest.raises(ConfigError, match=match):
            load_config(None, overrides)


def test_listwise_warmup_ramps_d7_from_the_first_step_of_stage_2() -> None:
    from drqa_plugin.train.losses import listwise_loss, listwise_weight, stage2_first_step

    assert stage2_first_step(ScheduleConfig(stage2_start=15, unit="epoch"), steps_per_epoch=16) == 240
    assert stage2_first_step(ScheduleConfig(stage2_start=300, unit="step"), steps_per_epoch=16) == 300
    ramp = LossConfig(listwise=0.8, listwise_warmup=4)
    assert [listwise_weight(ramp, k) for k in range(6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 0.8, 0.8])
    assert listwise_weight(ramp, None) == 0.8 and listwise_weight(LossConfig(listwise=0.8), 0) == 0.8
    t, groups = torch.tensor([0.1, 0.7, 0.4, 0.9]), torch.tensor([0, 0, 1, 1])
    dr, fr, gap = torch.rand(4), torch.rand(4), torch.rand(4)
    first = distillation_loss(TrainOutputs(dr, fr, None, gap), t, t, 2, ramp, group=groups, steps_into_stage2=0)
    assert torch.allclose(first.terms["d7"], 0.2 * listwise_loss(dr, t, groups, ramp.rank_scale))
