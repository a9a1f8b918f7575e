"""Inputs for ``tests/test_validate.py`` and ``benchmarks/bench_validate.py``: tiny SR checkpoints
of real architectures with random weights, LQ/GT folders made from scikit-image's photos.

Also a script: ``python tests/validate_helpers.py score ARGS...`` runs ``drqa score`` with the
distributed/resumable mode wired in exactly as proposed for ``drqa_plugin/cli/score.py`` (the
library's ``score_file_pairs`` is routed through ``score_file_pairs_sharded``), so the test can
launch it under ``accelerate launch`` before that two-line change is applied.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

PHOTO_NAMES = ("astronaut", "coffee", "chelsea", "rocket", "camera", "immunohistochemistry", "hubble_deep_field", "coins")


def photo(name: str, size: int) -> np.ndarray:
    """A bundled scikit-image photo, RGB uint8, resized to size x size."""
    from skimage import data

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.asarray(Image.fromarray(img[..., :3]).resize((size, size), Image.BICUBIC))


def make_images(lq_dir: Path, gt_dir: Path | None, count: int, lq_size: int, scale: int) -> list[str]:
    """``count`` LQ images (and their GT, ``scale`` times larger) named after the photos."""
    lq_dir.mkdir(parents=True, exist_ok=True)
    names = []
    for name in PHOTO_NAMES[:count]:
        gt = photo(name, lq_size * scale)
        if gt_dir is not None:
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(gt).save(gt_dir / f"{name}.png")
        Image.fromarray(gt).resize((lq_size, lq_size), Image.BICUBIC).save(lq_dir / f"{name}.png")
        names.append(f"{name}.png")
    return names


def compact_state(seed: int, scale: int = 2, feat: int = 8, conv: int = 2) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN SRVGGNetCompact state dict (spandrel's own class), random weights."""
    from spandrel.architectures.Compact import Compact

    torch.manual_seed(seed)
    return Compact(num_in_ch=3, num_out_ch=3, num_feat=feat, num_conv=conv, upscale=scale).state_dict()


def span_state(seed: int, scale: int = 2, feat: int = 16) -> dict[str, torch.Tensor]:
    """A SPAN state dict (spandrel's own class), random weights."""
    from spandrel.architectures.SPAN import SPAN

    torch.manual_seed(seed)
    return SPAN(num_in_ch=3, num_out_ch=3, feature_channels=feat, upscale=scale).eval().state_dict()


def save_basicsr_checkpoint(state: dict[str, torch.Tensor], path: Path, key: str = "params") -> Path:
    """Save as BasicSR does: the weights wrapped in ``params`` (or ``params_ema``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({key: state}, path)
    return path


def make_checkpoints(folder: Path, iterations: Sequence[int], scale: int = 2, feat: int = 8, conv: int = 2) -> list[Path]:
    """``net_g_<iteration>.pth`` Compact checkpoints, a different random model each."""
    return [save_basicsr_checkpoint(compact_state(i, scale, feat, conv), folder / f"net_g_{it}.pth")
            for i, it in enumerate(iterations)]


MSRRESNET_OPT = """\
name: tiny_msrresnet
model_type: SRModel
scale: 2
network_g:
  type: MSRResNet
  num_in_ch: 3
  num_out_ch: 3
  num_feat: 8
  num_block: 1
  upscale: 2
path:
  param_key_g: params_ema
"""


def make_msrresnet(folder: Path) -> tuple[Path, Path]:
    """A BasicSR MSRResNet checkpoint (an architecture spandrel does not detect) and its option file."""
    import yaml

    from drqa_plugin.integrations.basicsr._compat import import_basicsr

    import_basicsr()
    from basicsr.archs import build_network

    torch.manual_seed(0)
    opt = yaml.safe_load(MSRRESNET_OPT)
    net = build_network(dict(opt["network_g"]))
    folder.mkdir(parents=True, exist_ok=True)
    ckpt = folder / "net_g_400.pth"
    torch.save({"params": net.state_dict(), "params_ema": net.state_dict()}, ckpt)
    opt_file = folder / "train_tiny_msrresnet.yml"
    opt_file.write_text(MSRRESNET_OPT)
    return ckpt, opt_file


def _score_main(argv: list[str]) -> int:
    """``drqa score`` with the sharded mode wired in as proposed for ``cli/score.py``.

    Once ``cli/score.py`` has the change (it then imports ``sharded_scoring_requested``), this is
    plain ``drqa score``.
    """
    import drqa_plugin.cli.score as score_cmd
    import drqa_plugin.scorer as scorer_module
    from drqa_plugin.cli import build_parser, main
    from drqa_plugin.srval.options import sharded_scoring_requested
    from drqa_plugin.srval.score import score_file_pairs_sharded, score_settings

    if hasattr(score_cmd, "sharded_scoring_requested"):
        return main(["score", *argv])
    args = build_parser().parse_args(["score", *argv])
    assert sharded_scoring_requested(args), "launch this under accelerate launch with several processes"

    def sharded(scorer, pairs, batch_size=8, progress=True):
        result = score_file_pairs_sharded(scorer, pairs, args.out, settings=score_settings(args),
                                          batch_size=batch_size, progress=progress)
        if result is None:  # a worker process: the main process writes
            raise SystemExit(0)
        return result

    scorer_module.score_file_pairs = sharded  # what cli/score.py will call once the change is applied
    return main(["score", *argv])


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "score":
        raise SystemExit("usage: python tests/validate_helpers.py score --weights W --restored R --degraded D --out F")
    raise SystemExit(_score_main(sys.argv[2:]))
