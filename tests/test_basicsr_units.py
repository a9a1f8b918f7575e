"""The BasicSR adapter in-process: registration, metric, loss options, models, launcher checks."""

from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import downscale, photo

import drqa_plugin.integrations.basicsr as adapter
from drqa_plugin.errors import OptionError
from drqa_plugin.integrations import common
from drqa_plugin.integrations.basicsr import _compat, launcher, metrics, models, validate
from drqa_plugin.scorer import DRIQA
from drqa_plugin.weights import WeightsError, save_weights

from basicsr.losses import build_loss  # noqa: E402  (after the adapter's shim)
from basicsr.models.sr_model import SRModel  # noqa: E402
from basicsr.models import build_model  # noqa: E402
from basicsr.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY  # noqa: E402

OPTIONS_DIR = Path(__file__).resolve().parents[1] / "integrations" / "basicsr" / "options"
adapter.register()  # explicit, as the launchers do (importing the adapter registers nothing)


def bgr(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[..., ::-1])


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255).unsqueeze(0)


# ------------------------------------------------------------------ registration
def test_registered_and_idempotent() -> None:
    assert "DRIQALoss" in LOSS_REGISTRY and "calculate_driqa" in METRIC_REGISTRY
    assert {"DRIQASRModel", "DRIQASRGANModel"} <= set(MODEL_REGISTRY.keys())
    assert adapter.register() == models.register_models()


@pytest.mark.slow  # a fresh interpreter
def test_import_registers_nothing() -> None:
    """A fresh interpreter: importing the adapter leaves BasicSR's registries alone; register() fills them."""
    code = (
        "import drqa_plugin.integrations.basicsr as a; from drqa_plugin.integrations.basicsr import _compat;"
        "_compat.import_basicsr(); from basicsr.utils.registry import LOSS_REGISTRY as L;"
        "before = 'DRIQALoss' in L; a.register(); print(before, 'DRIQALoss' in L)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "False True", out.stderr[-3000:]


def test_foreign_object_under_our_name_is_an_error() -> None:
    class Registry(dict):
        _name = "test"

        def register(self, obj):
            self[obj.__name__] = obj

        def get(self, name):
            return self[name]

    registry = Registry()

    def calculate_driqa():  # somebody else's function with our name
        return 0

    registry.register(calculate_driqa)
    with pytest.raises(RuntimeError, match="already holds 'calculate_driqa'"):
        _compat.register(registry, metrics.calculate_driqa)


def test_shim_leaves_an_existing_module_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = types.ModuleType("torchvision.transforms.functional_tensor")
    monkeypatch.setitem(sys.modules, "torchvision.transforms.functional_tensor", legacy)
    assert _compat.install_torchvision_shim() is False
    assert sys.modules["torchvision.transforms.functional_tensor"] is legacy


def test_shim_provides_what_basicsr_imports() -> None:
    from torchvision.transforms.functional_tensor import rgb_to_grayscale  # noqa: F401  (via the shim)

    assert _compat.install_torchvision_shim() is False  # already there: nothing to do


# ------------------------------------------------------------------------ metric
@pytest.fixture(scope="module")
def val_pair() -> tuple[np.ndarray, np.ndarray]:
    """BasicSR-style validation images: uint8 HWC BGR output (x2) and its LQ."""
    hr = photo("chelsea", 96)
    output = np.asarray(hr)
    return bgr(output), bgr(downscale(hr, 2))


def test_metric_equals_scorer(weights_file: Path, val_pair) -> None:
    img, lq = val_pair
    value = metrics.calculate_driqa(img=img, img2=img, lq=lq, weights=str(weights_file), better="higher", device="cpu")
    rgb = DRIQA(weights_file)(to_tensor(img[..., ::-1].copy()), to_tensor(lq[..., ::-1].copy()))
    assert isinstance(value, float) and value == pytest.approx(float(rgb[0]), abs=1e-6)
    bgr_scorer = DRIQA(weights_file, channel_order="BGR")
    assert value == pytest.approx(bgr_scorer.score_pair(img, lq), abs=1e-7)


def test_metric_builds_network_once(weights_file: Path, val_pair) -> None:
    img, lq = val_pair
    common.clear_scorer_cache()
    for _ in range(3):
        metrics.calculate_driqa(img, lq=lq, weights=str(weights_file), device="cpu")
    metrics.calculate_driqa(img, lq=lq, weights=str(weights_file), device="cpu", preprocess="none")
    assert common.scorer_cache_size() == 2


def test_metric_errors(weights_file: Path, val_pair) -> None:
    img, lq = val_pair
    with pytest.raises(OptionError, match="unknown option key 'weigths' \\(did you mean 'weights'\\?\\)"):
        metrics.calculate_driqa(img, lq=lq, weigths=str(weights_file))
    with pytest.raises(OptionError, match="needs the LQ image"):
        metrics.calculate_driqa(img, img2=img, weights=str(weights_file))
    with pytest.raises(OptionError, match="higher-is-better"):
        metrics.calculate_driqa(img, lq=lq, weights=str(weights_file), better="lower")
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        metrics.calculate_driqa(img, lq=lq, weights="missing.safetensors")


# -------------------------------------------------------------------------- loss
def test_build_loss_through_basicsr(weights_file: Path) -> None:
    loss = build_loss({"type": "DRIQALoss", "weights": str(weights_file), "loss_weight": 0.05})
    assert isinstance(loss, adapter.DRIQALoss) and loss.loss_weight == 0.05
    with pytest.raises(OptionError, match="'loss_wieght' \\(did you mean 'loss_weight'\\?\\) in DRIQALoss options \\(train.driqa_opt"):
        build_loss({"type": "DRIQALoss", "weights": str(weights_file), "loss_wieght": 0.05})
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors"):
        build_loss({"type": "DRIQALoss", "weights": "nowhere.safetensors"})


def test_loss_rejects_other_architecture(tmp_path: Path) -> None:
    net = build_network_g()
    path = tmp_path / "msrresnet.safetensors"
    save_weights(net.state_dict(), path, provenance="an SR generator, not CKDN")
    with pytest.raises(WeightsError, match="does not fit CKDN"):
        build_loss({"type": "DRIQALoss", "weights": str(path)})


# ------------------------------------------------------------------------ models
def build_network_g() -> torch.nn.Module:
    from basicsr.archs import build_network

    return build_network({"type": "MSRResNet", "num_feat": 8, "num_block": 1, "upscale": 2})


def model_options(weights: Path, *, is_train: bool, train: dict | None = None) -> dict:
    return {
        "name": "unit",
        "model_type": "DRIQASRModel",
        "num_gpu": 0,
        "dist": False,
        "rank": 0,
        "world_size": 1,
        "is_train": is_train,
        "network_g": {"type": "MSRResNet", "num_feat": 8, "num_block": 1, "upscale": 2},
        "path": {"pretrain_network_g": None},
        "train": train or {},
        "val": {"metrics": {"driqa": {"type": "calculate_driqa", "weights": str(weights), "device": "cpu"}}},
    }


def test_lq_missing_from_a_batch(weights_file: Path) -> None:
    model = build_model(model_options(weights_file, is_train=False))
    gt = to_tensor(photo("astronaut", 32))
    with pytest.raises(models.MissingInputError, match="batch has no 'lq' image"):
        model.feed_data({"gt": gt})


def test_driqa_only_training_without_gt(weights_file: Path) -> None:
    """DR-IQA alone (no pixel/perceptual loss) trains from LQ images: no GT needed."""
    train = {
        "ema_decay": 0,
        "optim_g": {"type": "Adam", "lr": 1e-3},
        "scheduler": {"type": "MultiStepLR", "milestones": [10], "gamma": 0.5},
        "driqa_opt": {"weights": str(weights_file)},
    }
    model = build_model(model_options(weights_file, is_train=True, train=train))
    ckdn = {k: v.clone() for k, v in model.cri_driqa.state_dict().items()}
    generator = {k: v.clone() for k, v in model.net_g.state_dict().items()}
    lq = to_tensor(downscale(photo("rocket", 64), 2))
    model.feed_data({"lq": lq})
    model.optimize_parameters(1)
    assert set(model.log_dict) == {"l_driqa"} and 0 < model.log_dict["l_driqa"] < 1
    assert all(p.grad is None for p in model.cri_driqa.parameters())
    assert all(torch.equal(v, model.cri_driqa.state_dict()[k]) for k, v in ckdn.items())
    assert any(not torch.equal(v, model.net_g.state_dict()[k]) for k, v in generator.items())
    assert not model.cri_driqa.net.training


def gan_options(weights: Path, train: dict) -> dict:
    opt = model_options(weights, is_train=True, train={
        **train,
        "optim_d": {"type": "Adam", "lr": 1e-4},
        "gan_opt": {"type": "GANLoss", "gan_type": "vanilla", "loss_weight": 0.1},
        "net_d_iters": 1,
        "net_d_init_iters": 0,
    })
    opt.update(model_type="DRIQASRGANModel",
               network_d={"type": "UNetDiscriminatorSN", "num_in_ch": 3, "num_feat": 8, "skip_connection": True})
    return opt


@pytest.mark.parametrize("model_type", ["DRIQASRModel", "DRIQASRGANModel"])
def test_generator_loss_scores_the_output_against_the_batch_lq(weights_file: Path, model_type: str) -> None:
    """l_driqa is DRIQALoss(output, lq) of the batch: the very LQ tensor, not the GT (which differs decisively)."""
    train = {
        "ema_decay": 0,
        "optim_g": {"type": "Adam", "lr": 1e-3},
        "scheduler": {"type": "MultiStepLR", "milestones": [10], "gamma": 0.5},
        "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0},
        "driqa_opt": {"weights": str(weights_file), "loss_weight": 0.5},
    }
    opt = gan_options(weights_file, train) if model_type == "DRIQASRGANModel" else \
        model_options(weights_file, is_train=True, train=train)
    model = build_model(opt)
    hr = photo("astronaut", 64)
    rng = np.random.default_rng(0)
    noisy = np.clip(downscale(hr, 2) + rng.normal(scale=40, size=(32, 32, 3)), 0, 255).astype(np.uint8)
    lq, gt = to_tensor(noisy), to_tensor(hr)
    model.feed_data({"lq": lq, "gt": gt})
    calls = []
    loss = model.cri_driqa

    class Spy(torch.nn.Module):
        def forward(self, restored: torch.Tensor, degraded: torch.Tensor) -> torch.Tensor:
            calls.append((restored, degraded))
            return loss(restored, degraded)

    model.cri_driqa = Spy()
    model.optimize_parameters(1)
    ((restored, degraded),) = calls
    assert restored is model.output and degraded is model.lq
    plain = adapter.DRIQALoss(str(weights_file), loss_weight=0.5)
    with torch.no_grad():
        want, with_gt = float(plain(model.output, lq)), float(plain(model.output, gt))
    assert model.log_dict["l_driqa"] == pytest.approx(want, abs=1e-6)
    assert abs(with_gt - want) > 1e-3, (with_gt, want)


def test_dist_validation_validates_on_rank_0_with_the_lq(weights_file: Path, tmp_path: Path) -> None:
    """Under ``dist`` BasicSR validates on rank 0 only (SRModel.dist_validation); ours keeps that and still
    passes the LQ. (A real ``--launcher pytorch`` run needs CUDA: BasicSR's init_dist calls
    torch.cuda.set_device(rank % device_count), and building a dist model wraps it in CUDA DDP.)"""
    from basicsr.data import build_dataloader, build_dataset
    from PIL import Image

    model = build_model(model_options(weights_file, is_train=False))
    model.opt["path"]["visualization"] = str(tmp_path / "vis")
    lq_dir = tmp_path / "lq"
    lq_dir.mkdir()
    for name in ("coffee", "rocket"):
        Image.fromarray(photo(name, 40)).save(lq_dir / f"{name}.png")
    set_opt = {"name": "real", "type": "SingleImageDataset", "dataroot_lq": str(lq_dir),
               "io_backend": {"type": "disk"}, "phase": "val", "scale": 2}
    loader = build_dataloader(build_dataset(set_opt), set_opt, num_gpu=0, dist=False)
    model.opt.update(dist=True, rank=1, world_size=2)
    model.validation(loader, current_iter=1, tb_logger=None, save_img=True)
    assert not hasattr(model, "metric_results") and not (tmp_path / "vis").exists()  # rank 1 does nothing
    model.opt["rank"] = 0
    model.validation(loader, current_iter=1, tb_logger=None, save_img=True)
    assert set(model.metric_results) == {"driqa"}
    outputs = [tmp_path / "vis" / "real" / f"{name}_unit.png" for name in ("coffee", "rocket")]
    want = DRIQA(weights_file)(outputs, [lq_dir / f"{name}.png" for name in ("coffee", "rocket")]).mean()
    assert model.metric_results["driqa"] == pytest.approx(float(want), abs=1e-5)


def test_pixel_loss_without_gt_is_a_clear_error(weights_file: Path) -> None:
    train = {
        "optim_g": {"type": "Adam", "lr": 1e-3},
        "scheduler": {"type": "MultiStepLR", "milestones": [10], "gamma": 0.5},
        "pixel_opt": {"type": "L1Loss"},
        "driqa_opt": {"weights": str(weights_file)},
    }
    model = build_model(model_options(weights_file, is_train=True, train=train))
    model.feed_data({"lq": to_tensor(photo("coffee", 32))})
    with pytest.raises(models.MissingInputError, match="train.pixel_opt needs 'gt'"):
        model.optimize_parameters(1)


def test_no_generator_loss_at_all(weights_file: Path) -> None:
    train = {"optim_g": {"type": "Adam", "lr": 1e-3}, "scheduler": {"type": "MultiStepLR", "milestones": [10]}}
    with pytest.raises(OptionError, match="no generator loss"):
        build_model(model_options(weights_file, is_train=True, train=train))


# ---------------------------------------------------------------------- launcher
def test_split_argv_keeps_basicsr_flags() -> None:
    args = launcher.split_argv(["-opt", "x.yml", "--import", "my.mod", "--auto_resume", "--import=other"])
    assert args.option_file == Path("x.yml") and args.imports == ("my.mod", "other")
    assert args.basicsr_argv == ["-opt", "x.yml", "--auto_resume"]


def test_option_checks_name_the_problem(weights_file: Path, tmp_path: Path) -> None:
    base = {"model_type": "SRModel", "train": {"driqa_opt": {"weights": str(weights_file)}}}
    with pytest.raises(OptionError, match="model_type SRModel ignores train.driqa_opt"):
        validate.check_options(base, is_train=True)
    wrong_slot = {"model_type": "DRIQASRModel", "train": {"pixel_opt": {"type": "DRIQALoss"}}}
    with pytest.raises(OptionError, match="train.pixel_opt has type DRIQALoss"):
        validate.check_options(wrong_slot, is_train=True)
    no_lq = {"model_type": "SRGANModel", "val": {"metrics": {"dr": {"type": "calculate_driqa",
                                                                    "weights": str(weights_file)}}}}
    with pytest.raises(OptionError, match="does not pass the LQ image"):
        validate.check_options(no_lq, is_train=False)
    missing = {"model_type": "DRIQASRModel", "val": {"metrics": {"dr": {"type": "calculate_driqa",
                                                                       "weights": str(tmp_path / "gone.st")}}}}
    with pytest.raises(FileNotFoundError, match="val.metrics.dr \\(calculate_driqa\\): weights file not found"):
        validate.check_options(missing, is_train=False)
    bad = tmp_path / "bad.safetensors"
    save_weights(build_network_g().state_dict(), bad)
    other_arch = {"model_type": "DRIQASRModel", "train": {"driqa_opt": {"weights": str(bad)}}}
    with pytest.raises(OptionError, match="train.driqa_opt: .* does not fit CKDN"):
        validate.check_options(other_arch, is_train=True)


def test_unknown_registry_names_are_reported() -> None:
    options = {"model_type": "DRIQASRModel", "network_g": {"type": "NoSuchArchXYZ"}}
    with pytest.raises(ValueError, match="network_g.type: 'NoSuchArchXYZ' is not in BasicSR's arch registry"):
        launcher.import_plugins(options, [])


@pytest.mark.parametrize("template", sorted(p.name for p in OPTIONS_DIR.glob("*.yml")))
def test_option_templates(template: str) -> None:
    options = yaml.safe_load((OPTIONS_DIR / template).read_text())
    if "RealESRGAN" in str(options.get("model_type")) and models.DRIQARealESRGANModel is None:
        pytest.skip("Real-ESRGAN is not installed")
    launcher.import_plugins(options, [])  # every type it names is registered
    driqa_opt = (options.get("train") or {}).get("driqa_opt")
    if driqa_opt:
        validate.check_keys(driqa_opt, ("type", *validate.config_keys()), "driqa_opt")
    for name, opt in options["val"]["metrics"].items():
        if opt["type"] == "calculate_driqa":
            validate.check_keys(opt, ("type", *metrics.METRIC_KEYS), name)
    assert MODEL_REGISTRY.get(options["model_type"]).passes_lq_to_metrics


def test_realesrgan_model_registered_when_installed() -> None:
    if models.DRIQARealESRGANModel is None:
        pytest.skip(f"Real-ESRGAN not importable: {models.REALESRGAN_IMPORT_ERROR}")
    from realesrgan.models.realesrgan_model import RealESRGANModel

    cls = MODEL_REGISTRY.get("DRIQARealESRGANModel")
    assert issubclass(cls, RealESRGANModel) and issubclass(cls, models.DRIQAModelMixin)
    # Our validation and generator step come before Real-ESRGAN's in the method order.
    assert cls.nondist_validation is not RealESRGANModel.nondist_validation
    assert cls.optimize_parameters is not RealESRGANModel.optimize_parameters


# ------------------------------------------------- DR-IQA versions of project models
class WindowPadSRModel(SRModel):
    """A project model in HAT's style: validation runs through pre_process/process/post_process,
    which pad the LQ to a multiple of a window size (8 here) and crop the output back."""

    window = 8

    def pre_process(self) -> None:
        h, w = self.lq.shape[-2:]
        self.pad = (-h % self.window, -w % self.window)
        self.img = torch.nn.functional.pad(self.lq, (0, self.pad[1], 0, self.pad[0]), mode="reflect")
        self.hook_calls = getattr(self, "hook_calls", 0) + 1

    def process(self) -> None:
        self.net_g.eval()
        with torch.no_grad():
            self.output = self.net_g(self.img)

    def post_process(self) -> None:
        h, w = self.output.shape[-2:]
        self.output = self.output[..., : h - 2 * self.pad[0], : w - 2 * self.pad[1]]


class OwnStepSRModel(SRModel):
    def optimize_parameters(self, current_iter: int) -> None:  # pragma: no cover - never trained
        raise AssertionError


def test_driqa_version_of_a_project_model(weights_file: Path, tmp_path: Path) -> None:
    from basicsr.data import build_dataloader, build_dataset
    from PIL import Image

    _compat.register(MODEL_REGISTRY, WindowPadSRModel)
    launcher.import_plugins({"model_type": "DRIQAWindowPadSRModel"}, [])
    cls = MODEL_REGISTRY.get("DRIQAWindowPadSRModel")
    assert issubclass(cls, WindowPadSRModel) and cls.passes_lq_to_metrics
    train = {
        "optim_g": {"type": "Adam", "lr": 1e-3},
        "scheduler": {"type": "MultiStepLR", "milestones": [10]},
        "pixel_opt": {"type": "L1Loss"},
        "driqa_opt": {"weights": str(weights_file), "loss_weight": 0.1},
    }
    opt = model_options(weights_file, is_train=True, train=train)
    opt.update(model_type="DRIQAWindowPadSRModel", path={"pretrain_network_g": None, "visualization": str(tmp_path)})
    opt["val"]["metrics"]["psnr"] = {"type": "calculate_psnr", "crop_border": 2}
    model = build_model(opt)
    hr = photo("astronaut", 60)
    model.feed_data({"lq": to_tensor(downscale(hr, 2)), "gt": to_tensor(hr)})
    model.optimize_parameters(1)
    assert set(model.log_dict) == {"l_pix", "l_driqa"}

    lq_dir = tmp_path / "lq"
    lq_dir.mkdir()
    Image.fromarray(photo("rocket", 30)).save(lq_dir / "odd.png")  # 30 px: not a multiple of the window
    set_opt = {"name": "odd", "type": "SingleImageDataset", "dataroot_lq": str(lq_dir),
               "io_backend": {"type": "disk"}, "phase": "val", "scale": 2}
    loader = build_dataloader(build_dataset(set_opt), set_opt, num_gpu=0, dist=False)
    model.validation(loader, current_iter=1, tb_logger=None, save_img=False)
    assert model.hook_calls == 1 and set(model.metric_results) == {"driqa"}
    assert 0 < model.metric_results["driqa"] < 1 and model.net_g.training


def test_project_model_with_its_own_step_is_refused() -> None:
    with pytest.raises(OptionError, match="has its own optimize_parameters"):
        models.make_driqa_model(OwnStepSRModel)
