"""Pristine photo sources: any folder of images, or the photos scikit-image ships.

Only file headers are read when a source is listed (fast, and it proves each
file is a readable image); pixels are decoded on first use and cached.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from drqa_plugin.constants import IMAGE_SUFFIXES
from drqa_plugin.errors import DataError, ImageInputError
from drqa_plugin.files import atomic_path, atomic_write_text, sha256_file
from drqa_plugin.images import read_image, to_uint8

# Natural photos among scikit-image's bundled data files (no synthetic patterns,
# documents, binary masks or already-blurred images); all are >= 300 px.
BUNDLED_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "coins.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "moon.png",
    "motorcycle_left.png",
    "retina.jpg",
    "rocket.jpg",
)


@dataclass(frozen=True)
class Photo:
    path: str
    name: str  # file stem, used for held-out selection and sample names
    width: int
    height: int


def bundled_photo_dir() -> Path:
    """The folder of scikit-image's data files inside the installed package."""
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise DataError(
            "the default photos come from scikit-image; install it (pip install scikit-image) "
            "or set data.root to a folder of photos"
        ) from exc
    return Path(skimage.data.__file__).parent


def _probe(path: Path) -> Photo | None:
    try:
        with Image.open(path) as im:
            width, height = im.size
    except (UnidentifiedImageError, OSError):
        return None
    return Photo(str(path), path.stem, width, height)


def list_photos(root: str | os.PathLike | None = None) -> list[Photo]:
    """Readable photos of ``root`` (recursive, sorted), or the bundled ones when None."""
    if root is None:
        folder = bundled_photo_dir()
        candidates = [folder / name for name in BUNDLED_PHOTOS]
        missing = [str(p) for p in candidates if not p.is_file()]
        if missing:
            raise DataError(f"scikit-image's bundled photos are missing from the installation: {missing}")
    else:
        folder = Path(root)
        if not folder.is_dir():
            raise DataError(f"photo folder {str(folder)!r} does not exist or is not a folder")
        candidates = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not candidates:
            raise DataError(f"photo folder {str(folder)!r} has no image files (looked for {IMAGE_SUFFIXES})")
    photos = [p for p in (_probe(c) for c in candidates) if p is not None]
    if not photos:
        raise DataError(f"photo folder {str(folder)!r} has no readable images ({len(candidates)} file(s) failed)")
    names = [p.name for p in photos]
    if len(set(names)) != len(names):
        # Stems identify photos in configs (val_photos); keep them unique.
        photos = [Photo(p.path, str(Path(p.path).relative_to(folder).with_suffix("")), p.width, p.height)
                  for p in photos]
    return photos


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode a training photo to uint8 RGB HWC (transparent pixels composited onto white).

    Raises:
        DataError: the file is missing or unreadable.
    """
    try:
        return to_uint8(read_image(path, alpha="white"))
    except ImageInputError as exc:
        raise DataError(str(exc)) from None


@lru_cache(maxsize=64)
def read_rgb_cached(path: str) -> np.ndarray:
    """Decoded photo, cached per process (each DataLoader worker has its own cache)."""
    image = read_rgb(path)
    image.setflags(write=False)
    return image


def gather_photos(sources: Sequence[str | os.PathLike | None], out_dir: str | os.PathLike, *,
                  short_side: int | None = 512, progress: bool = True) -> list[Path]:
    """Collect photos from several folders into one folder for ``drqa data build --photos``.

    ``sources``: photo folders (recursive), ``None`` for scikit-image's bundled photos.
    Photos whose shorter side exceeds ``short_side`` are downscaled to it (Lanczos, RGB PNG):
    wallpapers and camera files are 2-6k px wide, and a 256 px crop of them is a patch of sky
    or bokeh, not a scene; smaller photos are copied byte for byte. Names (file stems) must be
    unique across the sources, since a bank names its photos by them. ``photos.json`` in
    ``out_dir`` records each photo's source, size and sha256, so a bank built on the folder
    can be traced back. Returns the written paths, sorted.

    Raises:
        DataError: a missing or empty source, clashing names, an unreadable photo or a bad
            ``short_side``.
    """
    if short_side is not None and (isinstance(short_side, bool) or int(short_side) != short_side or short_side < 16):
        raise DataError(f"short_side must be an integer >= 16 or None, got {short_side!r}")
    if not sources:
        raise DataError("gather_photos needs at least one source (a folder, or None for the bundled photos)")
    chosen: dict[str, Photo] = {}
    for source in sources:
        for photo in list_photos(source):
            name = Path(photo.name).name
            if name in chosen:
                raise DataError(f"two photos are named {name!r} ({chosen[name].path} and {photo.path}); "
                                "rename one, since a bank names its photos by file stem")
            chosen[name] = photo
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from tqdm.auto import tqdm

    record, written = {}, []
    for name, photo in tqdm(sorted(chosen.items()), desc="photos", unit="photo", disable=not progress):
        src = Path(photo.path)
        if short_side is None or min(photo.width, photo.height) <= short_side:
            dest, resized, size = out / f"{name}{src.suffix.lower()}", False, (photo.width, photo.height)
            with atomic_path(dest) as tmp:
                shutil.copyfile(src, tmp)
        else:
            pixels = read_rgb(src)  # EXIF orientation applied, so sizes come from the pixels
            h, w = pixels.shape[:2]
            scale = short_side / min(w, h)
            image = Image.fromarray(pixels).resize((round(w * scale), round(h * scale)), Image.Resampling.LANCZOS)
            dest, resized, size = out / f"{name}.png", True, image.size
            with atomic_path(dest) as tmp:
                image.save(tmp, format="PNG")
        record[dest.name] = {"source": str(src), "source_size": [photo.width, photo.height],
                             "size": list(size), "resized": resized, "sha256": sha256_file(dest)}
        written.append(dest)
    atomic_write_text(out / "photos.json",
                      json.dumps({"short_side": short_side, "photos": record}, indent=1, sort_keys=True) + "\n")
    return sorted(written)
