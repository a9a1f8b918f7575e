"""File helpers: atomic writes (one temporary sibling and one rename) and content hashes.

A reader (another rank, a resumed run, a user's ``ls``) sees either the old file or the
complete new one, never half of it. The temporary name is unique per process and call,
so concurrent writers of the same path cannot clobber each other's partial file; the
last rename wins. Files are created as ``open()`` creates them, so the umask applies.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

PathLike = str | os.PathLike


@contextmanager
def atomic_path(path: PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` if the block succeeds.

    For writers that take a file name (``PIL.Image.save``, ``savefig``, safetensors'
    ``save_file``). If the block raises, the temporary file is removed and ``path`` is left
    as it was. ``suffix`` ends the temporary name, for writers that look at the extension.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (parent folders are created)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""
    return atomic_write_bytes(path, text.encode(encoding))


def sha256_file(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (weights, checkpoints, photos)."""
    hasher = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            hasher.update(chunk)
    return hasher.hexdigest()
