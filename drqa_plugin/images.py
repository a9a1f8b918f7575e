"""Reading image files, the one way the whole package does it, and pairing folders of them.

:func:`read_image` is the only decoder: the scorer, the CLI, the evaluation lists
and the training data all call it. What differs between them is one explicit
choice, ``alpha=``: a scorer compares the colour a restoration produced, so it
drops an alpha channel (``"drop"``); training photos are shown to a model as they
would look on a page, so transparent pixels are composited onto white (``"white"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from drqa_plugin.constants import IMAGE_SUFFIXES
from drqa_plugin.errors import ImageInputError, MissingFileError

AlphaPolicy = Literal["drop", "white"]
ALPHA_POLICIES = ("drop", "white")


def read_image(path: str | os.PathLike, *, alpha: AlphaPolicy = "drop") -> np.ndarray:
    """Decode an image file to an HWC RGB array: uint8, or uint16 for 16-bit sources.

    EXIF orientation is applied (as viewers and OpenCV do). Grey is expanded to RGB;
    16-bit and 32-bit grey (PNG, TIFF, PGM) keep their precision instead of being
    clipped at 255.

    Raises:
        ImageInputError: the file is missing or not a readable image.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageInputError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            return image_to_array(img, alpha=alpha)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise ImageInputError(f"cannot read image {path}: {exc}") from exc


def image_to_array(img: Image.Image, *, alpha: AlphaPolicy = "drop") -> np.ndarray:
    """A PIL image as an HWC RGB uint8/uint16 array (see :func:`read_image`)."""
    if alpha not in ALPHA_POLICIES:
        raise ValueError(f"alpha must be one of {ALPHA_POLICIES}, got {alpha!r}")
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode == "F":
        grey = _high_depth_grey(img)
        return np.repeat(grey[..., None], 3, axis=2)
    has_alpha = img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info)
    if has_alpha and alpha == "white":
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def _high_depth_grey(img: Image.Image) -> np.ndarray:
    """16/32-bit integer or float grey as uint16 (or uint8 when the values fit 8 bits)."""
    values = np.asarray(img, dtype=np.float64)
    top = float(values.max()) if values.size else 0.0
    if img.mode == "F" and top <= 1.0:
        return np.clip(values * 65535.0 + 0.5, 0, 65535).astype(np.uint16)
    # PIL opens 16-bit PGM and TIFF as 32-bit "I": a maximum above 255 means 16-bit data.
    if img.mode.startswith("I;16") or top > 255:
        return np.clip(values + 0.5, 0, 65535).astype(np.uint16)
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """uint8 view of a :func:`read_image` array (16-bit data rounded to 8 bits)."""
    if image.dtype == np.uint8:
        return image
    return np.clip(image.astype(np.float64) / 65535.0 * 255.0 + 0.5, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- folders


def images_in(folder: Path) -> list[Path]:
    """Image files directly inside ``folder`` (by suffix), sorted."""
    return [p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


@dataclass
class PairPlan:
    """Which files are scored together, and what could not be paired (one message each)."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)


def _by_stem(paths: list[Path], role: str, plan: PairPlan) -> dict[str, Path]:
    """Images by stem; stems held by two files are reported in ``plan`` and left out."""
    groups: dict[str, list[Path]] = {}
    for path in paths:
        groups.setdefault(path.stem, []).append(path)
    for stem, same in groups.items():
        if len(same) > 1:
            names = ", ".join(p.name for p in same)
            plan.unmatched.append(f"{same[0].parent}: {role} images {names} share the name {stem!r}; "
                                  "pairing by name is ambiguous, so they are skipped")
    return {stem: same[0] for stem, same in groups.items() if len(same) == 1}


def pair_files(restored: Path, degraded: Path, restored_suffix: str = "") -> PairPlan:
    """Pair two files, or the images of two folders by file name (stem, extension ignored).

    ``restored_suffix`` is stripped from restored names first (``0001_out.png`` -> ``0001``).
    Two images of one folder with the same stem (``a.png`` and ``a.jpg``) are reported,
    not silently dropped.

    Raises:
        MissingFileError: ``restored`` or ``degraded`` does not exist.
        ImageInputError: one is a file and the other a folder, or the restored folder has no images.
    """
    for p in (restored, degraded):
        if not p.exists():
            raise MissingFileError(f"not found: {p}")
    if restored.is_file() and degraded.is_file():
        return PairPlan(pairs=[(restored, degraded)])
    if restored.is_file() != degraded.is_file():
        raise ImageInputError("--restored and --degraded must both be files or both be folders")
    restored_files = images_in(restored)
    if not restored_files:
        raise ImageInputError(f"no images in {restored} (looked for {', '.join(IMAGE_SUFFIXES)})")
    plan = PairPlan()
    outs = _by_stem(restored_files, "restored", plan)
    refs = _by_stem(images_in(degraded), "degraded", plan)
    ambiguous_refs = {p.stem for p in images_in(degraded)} - set(refs)
    matched_refs: set[str] = set()
    for stem, path in outs.items():
        key = stem[: -len(restored_suffix)] if restored_suffix and stem.endswith(restored_suffix) else stem
        if key in refs:
            plan.pairs.append((path, refs[key]))
            matched_refs.add(key)
        elif key not in ambiguous_refs:  # already reported
            plan.unmatched.append(f"{path}: no degraded image named {key}.* in {degraded}")
    plan.unmatched += [f"{p}: no restored image for it in {restored}" for k, p in refs.items() if k not in matched_refs]
    return plan
