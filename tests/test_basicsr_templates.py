"""Every BasicSR option template under integrations/basicsr/options/ loads and runs as shipped.

Each template runs through ``python -m drqa_plugin.integrations.basicsr.{train,test}`` in a fresh
folder laid out the way the template expects it (relative ``datasets/...`` and
``experiments/pretrained_models/...`` paths, ``weights: ckdn.safetensors`` in the working folder).
The only changes to a template are the number of steps (``train.total_iter``) and the hardware
(``num_gpu: 0``); the outputs go to the working folder as BasicSR puts them there. Datasets are
made from scikit-image's photos at the template's sizes (x4, GT >= gt_size 128, a full training
batch of 16); the pretrained files the templates name are random weights written in their place
(never downloaded): the generator checkpoints and BasicSR's VGG19 for the perceptual loss.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import photo
from PIL import Image
from test_basicsr_pipeline import LOGGED_ATOL, _save, driqa_of_saved_images, launch, read_log, validation_blocks

from drqa_plugin.integrations.basicsr._compat import import_basicsr

pytestmark = pytest.mark.slow
import_basicsr()  # BasicSR 1.4.2 needs the torchvision shim before the in-process imports below

OPTIONS = Path(__file__).resolve().parents[1] / "integrations" / "basicsr" / "options"
SCALE = 4
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def as_shipped(template: str, total_iter: int | None = None) -> dict:
    """The template, changed only in steps and hardware."""
    opt = yaml.safe_load((OPTIONS / template).read_text())
    opt["num_gpu"] = 0
    if total_iter is not None:
        opt["train"]["total_iter"] = total_iter
    return opt


def _lq(gt: np.ndarray) -> np.ndarray:
    h, w = gt.shape[:2]
    return np.asarray(Image.fromarray(gt).resize((w // SCALE, h // SCALE), Image.BICUBIC))


def make_paired(gt_dir: Path, lq_dir: Path, count: int, size: int) -> list[str]:
    """``count`` GT/LQ pairs (x4) of ``size`` px made from the bundled photos (flipped and rotated variants)."""
    names = []
    for i in range(count):
        img = photo(PHOTOS[i % len(PHOTOS)], size)
        img = np.ascontiguousarray(np.rot90(img, k=(i // len(PHOTOS)) % 4))
        name = f"{i:04d}.png"
        _save(img, gt_dir / name)
        _save(_lq(img), lq_dir / name)
        names.append(name)
    return names


def make_real_lq(folder: Path) -> list[Path]:
    """LQ-only "real" photos (no GT exists): the input of the GT-less validation sets."""
    paths = []
    for name in ("coffee", "chelsea"):
        path = folder / f"{name}.png"
        _save(photo(name, 100), path)  # x4 = 400 px: enough 96 px patches for NIQE
        paths.append(path)
    return paths


def workdir_with_weights(root: Path, weights_file: Path) -> Path:
    """A fresh project folder with the DR-IQA weights where the templates name them."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copy(weights_file, root / "ckdn.safetensors")
    return root


def save_random_generator(opt: dict, path: Path, key: str = "params", image_range: bool = False) -> None:
    """Random weights where the template names a pretrained generator. ``image_range``: a stand-in for a
    trained generator whose outputs lie in the image range (a fresh RRDBNet has no skip path and puts out
    [-1.05, 1.45] on these inputs, which DRIQALoss refuses: it accepts [-0.5, 1.5])."""
    from basicsr.archs import build_network

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = build_network(dict(opt["network_g"]))
    if image_range:
        with torch.no_grad():
            net.conv_last.weight.mul_(0.1)
            net.conv_last.bias.fill_(0.5)
    torch.save({key: net.state_dict()}, path)


def save_random_vgg19(root: Path) -> None:
    """BasicSR's PerceptualLoss loads experiments/pretrained_models/vgg19-dcbb9e9d.pth (relative to the working
    folder) before it would download ImageNet weights: random torchvision weights there, never a download."""
    import torchvision

    path = root / "experiments" / "pretrained_models" / "vgg19-dcbb9e9d.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg19(weights=None).state_dict(), path)


def run(module: str, opt: dict, cwd: Path) -> str:
    result = launch(module, opt, cwd)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    folder = cwd / ("experiments" if module == "train" else "results") / opt["name"]
    return read_log(folder, f"{module}_{opt['name']}_*.log")


def outputs_of_saved_generator(opt: dict, checkpoint: Path, key: str, lq_paths: list[Path], out_dir: Path) -> list[Path]:
    """What BasicSR's validation computes (``test()`` then ``tensor2img``) with the saved generator, as PNGs."""
    from basicsr.archs import build_network
    from basicsr.utils import img2tensor, imwrite, tensor2img

    net = build_network(dict(opt["network_g"]))
    net.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)[key])
    net.eval()
    paths = []
    for lq_path in lq_paths:
        lq = np.asarray(Image.open(lq_path).convert("RGB"), dtype=np.float32) / 255.0
        with torch.no_grad():
            out = net(img2tensor(lq, bgr2rgb=False, float32=True)[None])
        path = out_dir / lq_path.name
        imwrite(tensor2img([out]), str(path))
        paths.append(path)
    return paths


def check_driqa(values: dict, weights: Path, outputs: list[Path], lq_paths: list[Path]) -> None:
    assert values["driqa"] == pytest.approx(driqa_of_saved_images(weights, outputs, lq_paths), abs=LOGGED_ATOL)


def test_train_sr_driqa_template(tmp_path: Path, weights_file: Path) -> None:
    opt = as_shipped("train_sr_driqa.yml", total_iter=2)
    root = workdir_with_weights(tmp_path, weights_file)
    train, val = opt["datasets"]["train"], opt["datasets"]["val_1"]
    make_paired(root / train["dataroot_gt"], root / train["dataroot_lq"], train["batch_size_per_gpu"], 160)
    set5 = make_paired(root / val["dataroot_gt"], root / val["dataroot_lq"], 2, 120)  # GTmod12 sizes
    real = make_real_lq(root / opt["datasets"]["val_2"]["dataroot_lq"])
    log = run("train", opt, root)
    for line in ("Model [DRIQASRModel] is created.", "Loss [L1Loss] is created.", "Loss [DRIQALoss] is created.",
                 "Start training from epoch: 0, iter: 0", "End of training.",
                 "Validation set RealLQ has no GT: skipped psnr"):
        assert line in log, line
    blocks = validation_blocks(log)  # val_freq is 5000: only the validation after training
    assert {k: [set(v) for v in vs] for k, vs in blocks.items()} == {"Set5": [{"psnr", "driqa"}], "RealLQ": [{"driqa"}]}
    checkpoint = root / "experiments" / opt["name"] / "models" / "net_g_latest.pth"
    assert checkpoint.is_file()
    # save_img is off in this template: the logged DR-IQA is recomputed with the saved EMA generator.
    lq_set5 = [root / val["dataroot_lq"] / name for name in set5]
    scratch = tmp_path / "recomputed"
    check_driqa(blocks["Set5"][0], weights_file, outputs_of_saved_generator(opt, checkpoint, "params_ema", lq_set5,
                                                                           scratch / "set5"), lq_set5)
    check_driqa(blocks["RealLQ"][0], weights_file, outputs_of_saved_generator(opt, checkpoint, "params_ema", real,
                                                                             scratch / "real"), real)


def test_train_srgan_driqa_template(tmp_path: Path, weights_file: Path) -> None:
    opt = as_shipped("train_srgan_driqa.yml", total_iter=1)
    root = workdir_with_weights(tmp_path, weights_file)
    # "start from a PSNR-trained generator": one whose outputs are images
    save_random_generator(opt, root / opt["path"]["pretrain_network_g"], image_range=True)
    save_random_vgg19(root)
    train, val = opt["datasets"]["train"], opt["datasets"]["val_1"]
    make_paired(root / train["dataroot_gt"], root / train["dataroot_lq"], train["batch_size_per_gpu"], 160)
    set14 = make_paired(root / val["dataroot_gt"], root / val["dataroot_lq"], 2, 96)
    real = make_real_lq(root / opt["datasets"]["val_2"]["dataroot_lq"])
    log = run("train", opt, root)
    for line in ("Model [DRIQASRGANModel] is created.", "Loss [PerceptualLoss] is created.",
                 "Loss [GANLoss] is created.", "Loss [DRIQALoss] is created.", "End of training.",
                 "Validation set RealLQ has no GT: skipped psnr"):
        assert line in log, line
    blocks = validation_blocks(log)
    assert {k: [set(v) for v in vs] for k, vs in blocks.items()} == {"Set14": [{"psnr", "driqa"}], "RealLQ": [{"driqa"}]}
    experiment = root / "experiments" / opt["name"]
    assert (experiment / "models" / "net_g_latest.pth").is_file() and (experiment / "models" / "net_d_latest.pth").is_file()
    # save_img is on: the logged DR-IQA is the saved outputs' score against their LQ inputs.
    final = opt["train"]["total_iter"] + 1  # BasicSR's iteration number of the validation after training
    images = experiment / "visualization"
    outputs = [images / Path(n).stem / f"{Path(n).stem}_{final}.png" for n in set14]
    check_driqa(blocks["Set14"][0], weights_file, outputs, [root / val["dataroot_lq"] / n for n in set14])
    check_driqa(blocks["RealLQ"][0], weights_file, [images / p.stem / f"{p.stem}_{final}.png" for p in real], real)


def test_test_driqa_no_gt_template(tmp_path: Path, weights_file: Path) -> None:
    opt = as_shipped("test_driqa_no_gt.yml")
    root = workdir_with_weights(tmp_path, weights_file)
    save_random_generator(opt, root / opt["path"]["pretrain_network_g"], key=opt["path"]["param_key_g"])
    real = make_real_lq(root / opt["datasets"]["test_1"]["dataroot_lq"])
    log = run("test", opt, root)
    assert "Validation set RealLQ has no GT: skipped psnr" in log
    blocks = validation_blocks(log)
    assert list(blocks) == ["RealLQ"] and [set(v) for v in blocks["RealLQ"]] == [{"driqa", "niqe"}]
    folder = root / "results" / opt["name"] / "visualization" / "RealLQ"
    outputs = [folder / f"{p.stem}_{opt['name']}.png" for p in real]
    assert sorted(folder.iterdir()) == sorted(outputs)
    check_driqa(blocks["RealLQ"][0], weights_file, outputs, real)


@pytest.mark.gpu
def test_train_realesrgan_driqa_template(tmp_path: Path, weights_file: Path) -> None:
    """As shipped on a CUDA machine (num_gpu: auto). Not run on CPU: see the skip reason."""
    from drqa_plugin.integrations.basicsr import models

    if not torch.cuda.is_available():
        pytest.skip("train_realesrgan_driqa.yml needs CUDA: Real-ESRGAN synthesises its LQ batches on the GPU "
                    "(RealESRGANModel calls .cuda() unconditionally)")
    if models.DRIQARealESRGANModel is None:
        pytest.skip(f"Real-ESRGAN is not installed: {models.REALESRGAN_IMPORT_ERROR}")
    opt = yaml.safe_load((OPTIONS / "train_realesrgan_driqa.yml").read_text())
    opt["train"]["total_iter"] = 1
    root = workdir_with_weights(tmp_path, weights_file)
    save_random_generator(opt, root / opt["path"]["pretrain_network_g"], key=opt["path"]["param_key_g"], image_range=True)
    from basicsr.archs import build_network

    torch.save({opt["path"]["param_key_d"]: build_network(dict(opt["network_d"])).state_dict()},
               root / opt["path"]["pretrain_network_d"])
    save_random_vgg19(root)
    train = opt["datasets"]["train"]
    names = []
    for i in range(train["batch_size_per_gpu"]):  # RealESRGANDataset pads/crops GT to 400 px
        name = f"{i:04d}.png"
        _save(np.ascontiguousarray(np.rot90(photo(PHOTOS[i % len(PHOTOS)], 400), k=i // len(PHOTOS))),
              root / train["dataroot_gt"] / name)
        names.append(name)
    meta = root / train["meta_info"]
    meta.parent.mkdir(parents=True, exist_ok=True)
    meta.write_text("".join(f"{n}\n" for n in names))
    real = make_real_lq(root / opt["datasets"]["val_1"]["dataroot_lq"])
    log = run("train", opt, root)
    assert "Model [DRIQARealESRGANModel] is created." in log and "Loss [DRIQALoss] is created." in log
    blocks = validation_blocks(log)
    assert list(blocks) == ["RealLQ"] and [set(v) for v in blocks["RealLQ"]] == [{"driqa", "niqe"}]
    images = root / "experiments" / opt["name"] / "visualization"
    check_driqa(blocks["RealLQ"][0], weights_file, [images / p.stem / f"{p.stem}_2.png" for p in real], real)
