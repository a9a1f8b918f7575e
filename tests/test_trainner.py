"""DR-IQA in traiNNer-redux, run against the real traiNNer-redux code on CPU.

traiNNer-redux's ``train_pipeline`` refuses to start without CUDA, so on CPU these
tests drive its own pieces the way ``train.py`` does: its option parser, its
``create_train_val_dataloader`` (from its ``train.py``), its ``SRModel`` (through our
``build_model``), ``feed_data``/``optimize_parameters``/``validation``. Nothing is
mocked. The launcher is run as a process: its option errors, and the hand-over to
traiNNer-redux's ``train_pipeline`` (which then stops on CPU with its own CUDA
message). The full pipeline through the launcher runs where CUDA is available.

The checkout is ``$TRAINNER_REDUX_DIR`` or the vendored snapshot in ``shared/vendor/traiNNer-redux``
beside the repository (where CI and the development machines keep it).
"""

from __future__ import annotations

import copy
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import downscale, photo
from PIL import Image

import drqa_plugin as dq
from drqa_plugin.errors import ImageInputError, OptionError

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "integrations" / "trainner" / "options"
CANDIDATES = [os.environ.get("TRAINNER_REDUX_DIR"), str(REPO.parent / "shared" / "vendor" / "traiNNer-redux"),
              str(REPO / "shared" / "vendor" / "traiNNer-redux")]
TRAINNER = next((Path(c) for c in CANDIDATES if c and (Path(c) / "traiNNer" / "__init__.py").is_file()), None)

pytestmark = pytest.mark.skipif(
    TRAINNER is None,
    reason="traiNNer-redux checkout not found (set TRAINNER_REDUX_DIR or provide ../shared/vendor/traiNNer-redux)",
)

SCALE = 4
STEPS = 2
LOSS_WEIGHT = 0.05


# ------------------------------------------------------------------------- data
def _save(img: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def build_datasets(root: Path) -> dict[str, Path]:
    """x4 photo datasets: paired train, paired val, and LQ-only "real" images without GT."""
    dirs = {k: root / k for k in ("train_hr", "train_lr", "val_hr", "val_lr", "real_lr")}
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        hr = photo(name, 64)
        _save(hr, dirs["train_hr"] / f"{i:03d}.png")
        _save(downscale(hr, SCALE), dirs["train_lr"] / f"{i:03d}.png")
    for i, name in enumerate(("rocket", "astronaut")):
        hr = photo(name, 48)
        _save(hr, dirs["val_hr"] / f"v{i}.png")
        _save(downscale(hr, SCALE), dirs["val_lr"] / f"v{i}.png")
    for i, name in enumerate(("coffee", "chelsea")):
        _save(photo(name, 20), dirs["real_lr"] / f"real{i}.png")
    return dirs


def template_options(template: str, dirs: dict[str, Path], weights: Path, name: str) -> dict[str, Any]:
    """A shipped template with only paths, weights and step counts changed."""
    opt = yaml.safe_load((TEMPLATES / template).read_text())
    opt["name"] = name
    train, val_1, val_2 = (opt["datasets"][k] for k in ("train", "val_1", "val_2"))
    train["dataroot_gt"], train["dataroot_lq"] = [str(dirs["train_hr"])], [str(dirs["train_lr"])]
    val_1["dataroot_gt"], val_1["dataroot_lq"] = [str(dirs["val_hr"])], [str(dirs["val_lr"])]
    val_2["dataroot_lq"] = [str(dirs["real_lr"])]
    for loss in opt["train"]["losses"]:
        if loss["type"] == "driqaloss":
            loss["weights"] = str(weights)
    opt["val"]["metrics"]["driqa"]["weights"] = str(weights)
    opt["train"]["total_iter"] = STEPS
    opt["val"]["val_freq"] = STEPS
    opt["logger"].update(print_freq=1, save_checkpoint_freq=STEPS)
    return opt


def write_options(opt: dict[str, Any], folder: Path) -> Path:
    path = folder / f"{opt['name']}.yml"
    path.write_text(yaml.safe_dump(opt, sort_keys=False))
    return path


# ---------------------------------------------------------------- in-process run
class Run:
    """traiNNer-redux's train.py steps, in this process, on CPU."""

    def __init__(self, option_file: Path, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        from drqa_plugin.integrations.trainner import register
        from drqa_plugin.integrations.trainner.launcher import load_script, prepare_train_module
        from drqa_plugin.integrations.trainner.validate import check_options, load_options

        register(TRAINNER)
        from traiNNer.utils import get_root_logger, make_exp_dirs
        from traiNNer.utils.misc import set_random_seed
        from traiNNer.utils.options import parse_options

        accept_lq_only = check_options(load_options(option_file))
        self.train_py = prepare_train_module(load_script(TRAINNER / "train.py", "trainner_redux_train_test"),
                                             accept_lq_only_val=accept_lq_only)
        self.root = root
        monkeypatch.setattr(sys, "argv", ["train.py", "-opt", str(option_file)])
        monkeypatch.chdir(root)
        self.opt, args = parse_options(str(root), is_train=True)
        set_random_seed(self.opt.manual_seed)
        make_exp_dirs(self.opt)
        self.logger = get_root_logger(logger_name="traiNNer", log_file=str(root / "traiNNer.log"))
        self.train_loader, _, self.val_loaders, _, _ = self.train_py.create_train_val_dataloader(
            self.opt, args, True, self.logger
        )
        self.model = self.train_py.build_model(self.opt)
        self.batches = iter(self.train_loader)
        self.iter = 0
        self.logs: list[dict[str, float]] = []

    def feed(self) -> None:
        self.iter += 1
        self.model.set_current_iter(self.iter)
        self.model.feed_data(next(self.batches))

    def step(self) -> dict[str, float]:
        self.model.optimize_parameters(self.iter, 0, True)
        self.model.update_learning_rate(self.iter, warmup_iter=self.opt.train.warmup_iter)
        log = {k: float(v) for k, v in self.model.get_current_log().items()}
        self.model.reset_current_log()
        self.logs.append(log)
        return log

    def validate(self) -> dict[str, dict[str, float]]:
        """Every validation set, as train.py does; returns {set name: {metric: value}}."""
        results = {}
        for loader in self.val_loaders:
            self.model.validation(loader, self.iter, None, True, len(self.val_loaders) > 1)
            results[loader.dataset.opt.name] = {k: float(v) for k, v in self.model.metric_results.items()}
        return results


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return build_datasets(tmp_path_factory.mktemp("trainner_data"))


@pytest.fixture(scope="module")
def sr_run(tmp_path_factory: pytest.TempPathFactory, dirs: dict[str, Path], weights_file: Path) -> Run:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("trainner_sr")
    option_file = write_options(template_options("train_sr_driqa.yml", dirs, weights_file, "sr_driqa"), root)
    with pytest.MonkeyPatch.context() as monkeypatch:
        run = Run(option_file, root, monkeypatch)
        # Iteration 1: the term recomputed from the LQ (and not from the GT) must match.
        run.feed()
        lq, gt = run.model.lq.clone(), run.model.gt.clone()
        generator = copy.deepcopy(run.model.net_g)
        log = run.step()
        reference = dq.DRIQALoss(weights_file)  # the plain loss, outside traiNNer
        with torch.no_grad():
            output = generator(lq)
            run.expected_from_lq = LOSS_WEIGHT * float(1 - reference.score(output, lq).mean())
            run.value_from_gt = LOSS_WEIGHT * float(1 - reference.score(output, gt).mean())
        run.first_log = log
        for _ in range(STEPS - 1):
            run.feed()
            run.step()
        run.results = run.validate()
    return run


def test_loss_logged_and_finite(sr_run: Run) -> None:
    assert type(sr_run.model).__name__ == "DRIQASRModel"
    assert "l_g_driqa" in sr_run.model.losses and sr_run.model.losses["l_g_driqa"].is_bound
    values = [log["l_g_driqa"] for log in sr_run.logs]
    assert len(values) == STEPS and all(math.isfinite(v) and 0 < v < LOSS_WEIGHT for v in values)
    assert all(math.isfinite(log["l_g_charbonnier"]) for log in sr_run.logs)
    assert all(math.isfinite(log["grad_norm_g"]) and log["grad_norm_g"] > 0 for log in sr_run.logs)


def test_loss_received_the_lq_not_the_gt(sr_run: Run) -> None:
    logged = sr_run.first_log["l_g_driqa"]
    assert logged == pytest.approx(sr_run.expected_from_lq, abs=1e-6)
    assert abs(logged - sr_run.value_from_gt) > 1e-4, "the GT-referenced value must differ (the test would be blind)"


def test_gradients_reach_the_generator(sr_run: Run) -> None:
    model = sr_run.model
    sr_run.feed()
    params = [p for p in model.net_g.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    model.losses["l_g_driqa"](model.net_g(model.lq), model.gt).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in params)
    assert sum(float(p.grad.abs().sum()) for p in params) > 0
    before = [p.detach().clone() for p in params]
    sr_run.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, params)), "the optimiser step moved the generator"


def _saved_pairs(run: Run, dataset: str, lq_dir: Path) -> tuple[list[Path], list[Path]]:
    lq = sorted(lq_dir.iterdir())
    out = [Path(run.opt.path.visualization) / f"{dataset} - {p.stem}" / f"{p.stem}_{STEPS:06d}.png" for p in lq]
    assert all(p.is_file() for p in out), out
    return out, lq


def test_driqa_on_paired_and_lq_only_sets_equals_the_scorer(sr_run: Run, dirs: dict[str, Path],
                                                            weights_file: Path) -> None:
    paired, lq_only = sr_run.results["Paired Val"], sr_run.results["Real LQ"]
    assert set(paired) == {"psnr", "driqa"} and paired["psnr"] > 5
    assert set(lq_only) == {"driqa"}, "PSNR needs GT: skipped on the LQ-only set"
    scorer = dq.DRIQA(weights_file)
    for values, dataset, lq_dir in ((paired, "Paired Val", dirs["val_lr"]), (lq_only, "Real LQ", dirs["real_lr"])):
        outputs, lqs = _saved_pairs(sr_run, dataset, lq_dir)
        expected = float(scorer(outputs, lqs).mean())
        assert 0 < values["driqa"] < 1
        assert values["driqa"] == pytest.approx(expected, abs=1e-6)
    log = (sr_run.root / "traiNNer.log").read_text()
    assert log.count("Validation set Real LQ has no GT: skipped psnr") == 1
    best = sr_run.model.best_metric_results
    assert set(best["Real LQ"]) == {"driqa"} and set(best["Paired Val"]) == {"psnr", "driqa"}


def test_trainner_accepts_lq_only_validation_with_driqa(sr_run: Run) -> None:
    from traiNNer.data.paired_video_dataset import PairedVideoDataset

    accepted = sr_run.train_py.PairedImageDataset | PairedVideoDataset  # the expression train.py checks
    assert all(isinstance(loader.dataset, accepted) for loader in sr_run.val_loaders)


def test_gan_template_trains_and_validates(tmp_path: Path, dirs: dict[str, Path], weights_file: Path) -> None:
    option_file = write_options(template_options("train_gan_driqa.yml", dirs, weights_file, "gan_driqa"), tmp_path)
    with pytest.MonkeyPatch.context() as monkeypatch:
        run = Run(option_file, tmp_path, monkeypatch)
        run.feed()
        log = run.step()
        for key in ("l_g_driqa", "l_g_gan", "l_g_charbonnier", "l_d_real", "l_d_fake"):
            assert math.isfinite(log[key]), key
        assert 0 < log["l_g_driqa"] < LOSS_WEIGHT
        assert run.model.net_d is not None
        results = run.validate()
    assert set(results["Paired Val"]) == {"psnr", "driqa"} and set(results["Real LQ"]) == {"driqa"}


# ------------------------------------------------------------------ unit checks
def test_register_is_idempotent_and_case_insensitive() -> None:
    from drqa_plugin.integrations.trainner import DRIQALoss, calculate_driqa, register

    register(TRAINNER)
    register(TRAINNER)
    from traiNNer.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY

    assert LOSS_REGISTRY.get("DRIQALoss") is DRIQALoss and LOSS_REGISTRY.get("driqaloss") is DRIQALoss
    assert METRIC_REGISTRY.get("calculate_driqa") is calculate_driqa


def test_unbound_loss_refuses_to_compare_with_the_gt() -> None:
    from drqa_plugin.integrations.trainner.losses import DRIQALoss

    with pytest.warns(UserWarning, match="randomly initialised"):
        loss = DRIQALoss(weights="random", loss_weight=0.1)
    assert loss.loss_weight == 0.1
    with pytest.raises(ImageInputError, match="not bound to a model's LQ input"):
        loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32))


def test_metric_without_published_lq_says_how_to_get_it(weights_file: Path) -> None:
    from drqa_plugin.integrations.trainner.metrics import calculate_driqa

    with pytest.raises(OptionError, match="drops before its metrics run"):
        calculate_driqa(np.zeros((32, 32, 3), np.uint8), weights=str(weights_file))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda o: o["train"]["losses"][1].update(loss_wieght=0.1),
         "unknown option key 'loss_wieght' (did you mean 'loss_weight'?) in train.losses[1] (driqaloss)"),
        (lambda o: o["train"]["losses"][1].update(loss_weight=-0.05), "loss_weight must be >= 0"),
        (lambda o: o["train"]["losses"][1].update(reduction="none"), "reduction must be 'mean' or 'sum'"),
        (lambda o: o["train"]["losses"][1].update(weights="missing.safetensors"), "train.losses[1] (driqaloss): "),
        (lambda o: o["val"]["metrics"]["driqa"].update(device="cpu"), "remove 'device'"),
        (lambda o: o["val"]["metrics"]["driqa"].update(better="lower"), "higher-is-better"),
        (lambda o: o["train"]["losses"].append({"type": "driqalos", "loss_weight": 1}),
         "train.losses[2].type: 'driqalos' is not in traiNNer-redux's loss registry"),
        (lambda o: o["datasets"].pop("val_1"), "val.metrics.psnr needs GT images, but no validation set has them"),
        (lambda o: o["train"].update(driqa_opt={"type": "driqaloss"}), "unknown field `driqa_opt`"),
    ],
    ids=["typo", "negative", "none", "weights", "device", "better", "unknown-type", "gt-metric", "msgspec"],
)
def test_option_errors_name_the_key(tmp_path: Path, dirs: dict[str, Path], weights_file: Path,
                                    edit: Any, message: str) -> None:
    from drqa_plugin.integrations.trainner import register
    from drqa_plugin.integrations.trainner.validate import check_options, load_options

    register(TRAINNER)
    opt = template_options("train_sr_driqa.yml", dirs, weights_file, "bad")
    edit(opt)
    with pytest.raises(dq.ConfigError, match=re.escape(message)) as info:  # OptionError is a ConfigError
        check_options(load_options(write_options(opt, tmp_path)))
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------- launcher
def launch(option_file: Path, cwd: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "drqa_plugin.integrations.trainner.train", *extra, "-opt", str(option_file)],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=240,
    )


@pytest.mark.slow
def test_launcher_stops_on_a_typo_before_trainner_starts(tmp_path: Path, dirs: dict[str, Path],
                                                         weights_file: Path) -> None:
    opt = template_options("train_sr_driqa.yml", dirs, weights_file, "typo")
    opt["val"]["metrics"]["driqa"]["preprocces"] = "ckdn"
    result = launch(write_options(opt, tmp_path), tmp_path, "--trainner", str(TRAINNER))
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("drqa-plugin: ") and "unknown option key 'preprocces' (did you mean 'preprocess'?)" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "experiments").exists()


@pytest.mark.slow
def test_launcher_names_a_missing_checkout(tmp_path: Path) -> None:
    result = launch(TEMPLATES / "train_sr_driqa.yml", tmp_path, "--trainner", str(tmp_path / "nowhere"))
    assert result.returncode != 0
    assert "not a traiNNer-redux checkout" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU hand-over; the GPU test runs the pipeline")
def test_launcher_hands_over_to_trainner_train_pipeline(tmp_path: Path, dirs: dict[str, Path],
                                                        weights_file: Path) -> None:
    """Options accepted, traiNNer-redux's own train_pipeline called: on CPU it stops with its CUDA message."""
    option_file = write_options(template_options("train_sr_driqa.yml", dirs, weights_file, "handover"), tmp_path)
    result = launch(option_file, tmp_path, env={"TRAINNER_REDUX_DIR": str(TRAINNER)})
    assert result.returncode != 0
    assert "CUDA is not available" in result.stderr, result.stderr[-3000:]
    assert "drqa-plugin:" not in result.stderr


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="traiNNer-redux's train_pipeline needs CUDA")
@pytest.mark.skipif(
    TRAINNER is None or not (TRAINNER / "scripts" / "options" / "generate_default_options.py").is_file(),
    reason="train_pipeline imports scripts/options/generate_default_options.py, absent from this checkout",
)
def test_launcher_full_pipeline_on_gpu(tmp_path: Path, dirs: dict[str, Path], weights_file: Path) -> None:
    option_file = write_options(template_options("train_sr_driqa.yml", dirs, weights_file, "gpu_run"), tmp_path)
    result = launch(option_file, tmp_path, "--trainner", str(TRAINNER))
    assert result.returncode == 0, result.stderr[-4000:]
    logs = sorted((tmp_path / "experiments" / "gpu_run").glob("train_gpu_run_*.log"))
    assert logs, "traiNNer-redux wrote no log"
    text = logs[-1].read_text()
    assert "l_g_driqa" in text and "Validation Real LQ" in text and "Validation Paired Val" in text
