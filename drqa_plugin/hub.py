"""Named weights: download once, verify, convert to our format, cache (``resolve_weights("ckdn_pipal")``).

Every place that accepts a weights path can accept a registered name instead:
:func:`resolve_weights` returns an existing file path unchanged and turns a name
into a local, verified file. Built-in names:

``ckdn_pipal``
    The authors' CKDN weights trained on PIPAL (researchmm/CKDN, MIT licence),
    in the copy pyiqa distributes, ``CKDN_model_best-38b27dc6.pth`` (flat
    ``net.`` state dict). Fetched from pyiqa's Hugging Face mirror, then its
    GitHub release; converted once to our ``.safetensors`` format.
``imagenet_resnet50``
    torchvision's ``ResNet50_Weights.IMAGENET1K_V1`` (``resnet50-0676ba61.pth``),
    the paper's initialisation for training. Its URL is read from torchvision at
    run time; the file is verified and returned as is (not converted), for
    :func:`drqa_plugin.convert.init_from_imagenet_resnet50`.

Which digest is checked: the SHA-256 of the downloaded (or found) file must
*start with* the registered hex string. For both built-ins that is the 8-digit
prefix embedded in the file name, torch.hub's naming convention:
``38b27dc6`` for ``CKDN_model_best-38b27dc6.pth`` and ``0676ba61`` for
``resnet50-0676ba61.pth`` (the full digests are not published, so nothing
longer can be checked). Entries added with :func:`register_weights` are checked
against whatever they register: a full 64-digit digest or a prefix of at least
8 digits. The check runs before the file is unpickled or converted.

Where files live (first match wins, nothing is downloaded when one matches):

1. the cache: ``$DRQA_HOME`` if set, else ``<torch.hub.get_dir()>/drqa_plugin``.
   A converted CKDN checkpoint is stored as ``<file stem>.safetensors`` with
   metadata ``source_url``, ``source_sha256``, ``source_file``, ``weights_name``
   and the entry's licence in ``license``; the verified original is kept next to it
   so a later converter can redo the conversion offline.
2. pyiqa's cache (``<torch.hub.get_dir()>/pyiqa``) and torch.hub's
   (``<torch.hub.get_dir()>/checkpoints``), under the same file name, used only
   after the hash check.

Environment: ``DRQA_MIRROR=URL`` is tried first (``URL/<file name>``);
``DRQA_OFFLINE=1`` or ``HF_HUB_OFFLINE=1`` forbids any network access.
Downloads use :mod:`urllib.request` (honouring the usual proxy variables), write
``<file>.partial`` and rename it only once complete and verified, and are
serialised across processes with ``fcntl.flock`` on ``<cache>/<file>.lock``
(so under Accelerate/DDP one process downloads while the others wait). The lock
is advisory and local: on a network file system without ``flock`` support, run
:func:`download_weights` once before launching.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import shutil
import socket
import sys
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import IO

from drqa_plugin.errors import WeightsError, WeightsNotFoundError
from drqa_plugin.files import sha256_file

#: Layouts an entry may declare. ``official``/``pyiqa`` are CKDN checkpoints that
#: are converted once; ``drqa`` is already our safetensors format; ``torchvision``
#: is an ImageNet ResNet-50 state dict handed to ``init_from_imagenet_resnet50``.
LAYOUTS = ("official", "pyiqa", "drqa", "torchvision")
CONVERTED_LAYOUTS = ("official", "pyiqa")
#: Seconds a socket may wait for the server before the URL counts as failed.
DEFAULT_TIMEOUT_S = 30.0

_CHUNK = 1 << 20
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]*$")
_HEX_RE = re.compile(r"^[0-9a-f]{8,64}$")
# torch.hub's convention: "<name>-<sha256 prefix>.<ext>".
_NAME_HASH_RE = re.compile(r"-([0-9a-f]{8,64})\.")
_URL_SCHEMES = ("http", "https", "file")
_TRUTHY = ("1", "true", "yes", "on")
_CHECKPOINT_SUFFIXES = (".pth.tar", ".pth", ".pt", ".tar", ".ckpt", ".bin")


class DownloadError(WeightsError):
    """Named weights could not be obtained: every URL failed, or downloads are disabled."""


@dataclass(frozen=True)
class WeightsEntry:
    """One registered name: where its file comes from and how it is checked and used."""

    name: str
    urls: tuple[str, ...]
    sha256: str
    layout: str
    licence: str
    file_name: str
    description: str = ""
    size: int | None = None
    # Built-ins whose URL belongs to another library (torchvision) read it at
    # resolve time, so it is never copied here and never goes stale.
    url_source: Callable[[], str] | None = field(default=None, repr=False)

    @property
    def cached_name(self) -> str:
        """The file name :func:`resolve_weights` returns from the cache."""
        if self.layout in CONVERTED_LAYOUTS:
            return _stem(self.file_name) + ".safetensors"
        return self.file_name


@dataclass(frozen=True)
class WeightsInfo:
    """What :func:`list_weights` reports about one name (a snapshot; nothing is downloaded)."""

    name: str
    urls: tuple[str, ...]
    sha256: str
    layout: str
    licence: str
    size: int | None
    cached: bool
    cache_path: Path
    file_name: str
    description: str


_REGISTRY: dict[str, WeightsEntry] = {}
# (path, size, mtime_ns) -> sha256 of files verified in this process, so a file
# returned as is (drqa/torchvision layouts) is hashed once per process, not per call.
_VERIFIED: dict[tuple[str, int, int], str] = {}


# --------------------------------------------------------------------------- registry


def register_weights(
    name: str,
    urls: Sequence[str],
    sha256: str,
    layout: str,
    licence: str,
    file_name: str | None = None,
    description: str = "",
    *,
    size: int | None = None,
) -> WeightsEntry:
    """Register named weights so that :func:`resolve_weights` (and every ``weights=`` argument) accepts the name.

    Args:
        name: the public name (letters, digits, ``_.-``; starts with a letter).
        urls: download URLs (``http``, ``https`` or ``file``), tried in order.
        sha256: the file's full SHA-256 or a prefix of at least 8 hex digits.
        layout: ``"official"`` or ``"pyiqa"`` (CKDN checkpoints, converted once),
            ``"drqa"`` (already our safetensors format) or ``"torchvision"``
            (an ImageNet ResNet-50 state dict for training initialisation).
        licence: the licence of the weights; stored in converted files.
        file_name: the name the file is cached under; defaults to the last path
            component of the first URL.
        description: one line for ``drqa weights list``.
        size: the file size in bytes, if known (shown before it is downloaded).

    Returns:
        The registered entry; re-registering an identical entry returns the existing one.

    Raises:
        ValueError: a malformed argument, or another entry already registered under ``name``.
    """
    if isinstance(urls, str):
        urls = [urls]
    entry = _make_entry(name, tuple(urls), sha256, layout, licence, file_name, description, size, None)
    return _add(entry)


def unregister_weights(name: str) -> None:
    """Remove a registered name (mainly for tests); the cache is left alone.

    Raises:
        KeyError: ``name`` is not registered.
    """
    try:
        del _REGISTRY[name]
    except KeyError:
        raise KeyError(f"no weights registered as {name!r}; known: {weights_names()}") from None


def get_weights(name: str) -> WeightsEntry:
    """The entry registered as ``name``.

    Raises:
        WeightsError: ``name`` is not registered (the message lists the known names).
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise WeightsError(f"unknown weights name {name!r}; known: {', '.join(weights_names())}") from None


def weights_names() -> list[str]:
    """Registered names, in registration order (built-ins first)."""
    return list(_REGISTRY)


def weights_cache_dir() -> Path:
    """``$DRQA_HOME`` if set, else ``<torch.hub.get_dir()>/drqa_plugin`` (not created here)."""
    home = os.environ.get("DRQA_HOME")
    if home:
        return Path(home).expanduser()
    import torch.hub

    return Path(torch.hub.get_dir()) / "drqa_plugin"


def list_weights(cache_dir: str | os.PathLike | None = None) -> list[WeightsInfo]:
    """A snapshot of every registered name and whether it is available without the network.

    ``cached`` is true when the final file is in the cache, or its source file
    is in the cache, pyiqa's or torch.hub's (not hashed here: listing stays cheap).
    ``size`` is then that file's size, else the registered size (or ``None``).
    """
    root = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    infos = []
    for entry in _REGISTRY.values():
        entry, _ = _with_runtime_urls(entry)
        product = root / entry.cached_name
        found = product if product.is_file() else next((p for p in _source_candidates(entry, root) if p.is_file()), None)
        infos.append(
            WeightsInfo(
                name=entry.name,
                urls=entry.urls,
                sha256=entry.sha256,
                layout=entry.layout,
                licence=entry.licence,
                size=found.stat().st_size if found is not None else entry.size,
                cached=found is not None,
                cache_path=found if found is not None else product,
                file_name=entry.file_name,
                description=entry.description,
            )
        )
    return infos


def format_weights_table(
    infos: Sequence[WeightsInfo] | None = None, *, cache_dir: str | os.PathLike | None = None
) -> str:
    """A plain-text table of :func:`list_weights` (for ``drqa weights list``), ending with the cache folder."""
    root = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    infos = list_weights(root) if infos is None else infos
    rows = [("name", "layout", "cached", "size", "sha256", "licence", "file / description")]
    for info in infos:
        size = f"{info.size / 2**20:.1f} MiB" if info.size is not None else "-"
        where = str(info.cache_path) if info.cached else info.file_name
        rows.append((info.name, info.layout, "yes" if info.cached else "no", size, info.sha256[:8], info.licence, where))
        if info.description:
            rows.append(("", "", "", "", "", "", info.description))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows]
    lines.append(f"cache: {root}")
    return "\n".join(line.rstrip() for line in lines)


# --------------------------------------------------------------------------- resolving


def resolve_weights(
    spec: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    progress: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> Path:
    """A local weights file for a path or a registered name.

    An existing file is returned as is (no network, no hashing). A registered
    name is returned as a verified file in the cache, downloading and (for CKDN
    checkpoints) converting it the first time: the converted ``.safetensors``
    for ``official``/``pyiqa``/``drqa`` entries, the verified ``.pth`` for
    ``torchvision`` entries. Once cached, no network request is made.

    Args:
        spec: a file path or a registered name.
        cache_dir: overrides :func:`weights_cache_dir`.
        progress: show a download progress bar; ``None`` shows it when stderr is a terminal.
        timeout: socket timeout in seconds for each URL.

    Raises:
        WeightsNotFoundError: ``spec`` is neither an existing file nor a registered
            name (the message lists the known names).
        WeightsError: a cached/found file does not fit its entry.
        DownloadError: the weights are not available locally and every URL failed
            or downloads are disabled; the message names each URL and why it
            failed, the expected file and hash, the cache folder and the manual fix.
    """
    if isinstance(spec, (str, os.PathLike)) and os.fspath(spec) and Path(spec).is_file():
        return Path(spec)
    entry = _REGISTRY.get(spec) if isinstance(spec, str) else None
    if entry is None:
        # "weights file not found" first: most such specs are mistyped paths.
        raise WeightsNotFoundError(
            f"weights file not found: {os.fspath(spec)} (and it is not a known weights name; "
            f"known names: {', '.join(weights_names())}; add your own with drqa_plugin.hub.register_weights)"
        )
    root = Path(cache_dir) if cache_dir is not None else weights_cache_dir()
    return _resolve_entry(entry, root, progress=progress, timeout=timeout)


def download_weights(
    names: str | Iterable[str],
    to: str | os.PathLike | None = None,
    *,
    progress: bool | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
) -> list[Path]:
    """Fetch (and convert) registered weights ahead of time, e.g. before going offline.

    Args:
        names: one name or several.
        to: the cache folder to fill (default :func:`weights_cache_dir`); point
            ``DRQA_HOME`` at it later to use it.
        progress: as for :func:`resolve_weights`.
        timeout: as for :func:`resolve_weights`.

    Returns:
        The local file of each name, in order.

    Raises:
        WeightsError: an unknown name (checked for all names before anything is fetched).
        DownloadError: as for :func:`resolve_weights`.
    """
    names = [names] if isinstance(names, str) else list(names)
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise WeightsError(f"unknown weights name(s) {unknown}; known: {', '.join(weights_names())}")
    root = Path(to) if to is not None else weights_cache_dir()
    return [_resolve_entry(_REGISTRY[n], root, progress=progress, timeout=timeout) for n in names]


def _resolve_entry(entry: WeightsEntry, root: Path, *, progress: bool | None, timeout: float) -> Path:
    entry, url_note = _with_runtime_urls(entry)
    product = root / entry.cached_name
    # Files only ever appear in the cache by an atomic rename after verification,
    # so the fast path needs no lock (and works on a read-only shared cache).
    if _product_ready(entry, product):
        return product
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock_path = root / f"{entry.file_name}.lock"
        lock_path.touch(exist_ok=True)
    except OSError as exc:
        raise DownloadError(
            f"weights {entry.name!r}: cannot use the cache folder {root} ({exc}); point DRQA_HOME at a writable "
            f"folder\n{_header(entry)}\n{_manual_fix(entry, root)}"
        ) from exc
    with open(lock_path, "a+b") as handle, _exclusive(handle):
        # Another process may have finished while this one waited for the lock.
        if _product_ready(entry, product):
            return product
        found = _find_local_source(entry, root)
        if found is not None:
            source, digest, origin = found, _VERIFIED[_stat_key(found)], str(found)
        elif _offline():
            raise DownloadError(_offline_message(entry, root, url_note))
        else:
            source, digest, origin = _download(entry, root, progress=progress, timeout=timeout, url_note=url_note)
        return _finish(entry, source, digest, origin, product)


def _product_ready(entry: WeightsEntry, product: Path) -> bool:
    if not product.is_file():
        return False
    if entry.layout in CONVERTED_LAYOUTS:
        # Our own file, written after the source was verified: its metadata says
        # which source it came from (a changed registration must not reuse it).
        from drqa_plugin.weights import read_metadata

        try:
            return read_metadata(product).get("source_sha256", "").startswith(entry.sha256)
        except (WeightsError, OSError):
            return False
    return _matches(product, entry.sha256)


def _find_local_source(entry: WeightsEntry, root: Path) -> Path | None:
    """A file with the entry's name and hash in our cache, pyiqa's or torch.hub's."""
    for candidate in _source_candidates(entry, root):
        if not candidate.is_file():
            continue
        if _matches(candidate, entry.sha256):
            return candidate
        ours = candidate.parent == root
        if ours:
            # Ours and wrong (e.g. a bad manual copy): never leave it to be picked up again.
            candidate.unlink()
        warnings.warn(
            f"drqa-plugin: ignoring {candidate} for weights {entry.name!r}: its sha256 does not start with "
            f"{entry.sha256}" + (" (removed from the cache)" if ours else ""),
            stacklevel=4,
        )
    return None


def _source_candidates(entry: WeightsEntry, root: Path) -> list[Path]:
    import torch.hub

    hub = Path(torch.hub.get_dir())
    # pyiqa 0.1.16 caches in <hub>/pyiqa (utils/download_util.py); torch.hub and
    # torchvision in <hub>/checkpoints.
    dirs = [root, hub / "pyiqa", hub / "checkpoints"]
    seen: list[Path] = []
    for d in dirs:
        path = d / entry.file_name
        if path not in seen:
            seen.append(path)
    return seen


def _finish(entry: WeightsEntry, source: Path, digest: str, origin: str, product: Path) -> Path:
    """Turn a verified source file into the cached product."""
    if entry.layout in CONVERTED_LAYOUTS:
        from drqa_plugin.convert import convert_checkpoint

        source_url = origin if "://" in origin else (entry.urls[0] if entry.urls else "")
        try:
            return convert_checkpoint(
                source,
                product,
                license=entry.licence,
                layout=entry.layout,
                extra_metadata={
                    "source_url": source_url,
                    "source_sha256": digest,
                    "source_file": entry.file_name,
                    "weights_name": entry.name,
                },
            )
        except WeightsError as exc:
            raise WeightsError(
                f"weights {entry.name!r}: {source} has the registered sha256 but cannot be converted "
                f"as a {entry.layout} CKDN checkpoint: {exc}"
            ) from exc
    if entry.layout == "drqa":
        from drqa_plugin.weights import read_metadata

        try:
            read_metadata(source)
        except WeightsError as exc:
            if source.parent == product.parent:
                # Its hash is right but it is unusable: never return it from the cache later.
                source.unlink(missing_ok=True)
            raise WeightsError(
                f"weights {entry.name!r} are registered with layout 'drqa' but {source} is not a "
                f"drqa-plugin weights file: {exc}"
            ) from exc
    if source != product:
        _adopt(source, product)
    return product


def _adopt(source: Path, product: Path) -> None:
    """Put a verified file found in another cache into ours (a hard link when possible: no extra space)."""
    partial = product.with_name(product.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        try:
            os.link(source, partial)
        except OSError:
            shutil.copyfile(source, partial)
        os.replace(partial, product)
    finally:
        partial.unlink(missing_ok=True)
    _VERIFIED[_stat_key(product)] = _VERIFIED[_stat_key(source)]


# --------------------------------------------------------------------------- downloading


def _download(
    entry: WeightsEntry, root: Path, *, progress: bool | None, timeout: float, url_note: str
) -> tuple[Path, str, str]:
    """Try every URL in order; returns (verified file in the cache, its sha256, the URL used)."""
    dest = root / entry.file_name
    partial = dest.with_name(dest.name + ".partial")
    failures: list[tuple[str, str]] = []
    for url in _candidate_urls(entry):
        try:
            digest = _fetch(url, partial, entry, progress=progress, timeout=timeout)
            if not digest.startswith(entry.sha256):
                failures.append((url, f"sha256 {digest[:16]}... does not start with {entry.sha256} (corrupt or another file)"))
                continue
            os.replace(partial, dest)
            _VERIFIED[_stat_key(dest)] = digest
            if failures:
                # Worth knowing (a blocked mirror, a moved file), but not worth failing for.
                tried = "; ".join(f"{u}: {why}" for u, why in failures)
                warnings.warn(f"drqa-plugin: downloaded {entry.name!r} from {url} after {tried}", stacklevel=4)
            return dest, digest, url
        except _FETCH_ERRORS as exc:
            failures.append((url, _reason(exc, timeout)))
        finally:
            # Whatever happened (failure, Ctrl-C), no partial file survives to be mistaken for a download.
            partial.unlink(missing_ok=True)
    raise DownloadError(_failure_message(entry, root, failures, url_note))


class _Truncated(OSError):
    pass


_FETCH_ERRORS = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)


def _fetch(url: str, partial: Path, entry: WeightsEntry, *, progress: bool | None, timeout: float) -> str:
    from tqdm.auto import tqdm

    import drqa_plugin

    agent = f"drqa-plugin/{getattr(drqa_plugin, '__version__', 'dev')}"
    request = urllib.request.Request(url, headers={"User-Agent": agent})
    show = sys.stderr.isatty() if progress is None else progress
    hasher = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.strip().isdigit() else None
        with open(partial, "wb") as out, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.file_name, disable=not show
        ) as bar:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                hasher.update(chunk)
                received += len(chunk)
                bar.update(len(chunk))
    # http.client returns a short body silently when the server closes early.
    if total is not None and received != total:
        raise _Truncated(f"truncated response: received {received} of {total} bytes")
    return hasher.hexdigest()


def _reason(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, _Truncated):
        return str(exc)
    inner = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(inner, (socket.timeout, TimeoutError)):
        return f"timed out (no answer within {timeout:g} s)"
    if isinstance(inner, socket.gaierror):
        return f"host not found / no network ({inner})"
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, http.client.IncompleteRead):
        return f"truncated response: received {len(exc.partial)} bytes, {exc.expected} more expected"
    return f"{type(inner).__name__}: {inner}" if isinstance(inner, BaseException) else str(inner)


def _candidate_urls(entry: WeightsEntry) -> list[str]:
    urls = []
    mirror = os.environ.get("DRQA_MIRROR", "").strip()
    if mirror:
        urls.append(f"{mirror.rstrip('/')}/{urllib.parse.quote(entry.file_name)}")
    for url in entry.urls:
        if url not in urls:
            urls.append(url)
    return urls


def _offline() -> bool:
    return any(os.environ.get(var, "").strip().lower() in _TRUTHY for var in ("DRQA_OFFLINE", "HF_HUB_OFFLINE"))


# --------------------------------------------------------------------------- messages


def _manual_fix(entry: WeightsEntry, root: Path) -> str:
    where = entry.urls[0] if entry.urls else f"{entry.name}'s publisher"
    fix = (
        f"Manual fix: download {entry.file_name} on a machine with access (e.g. from {where}), check that "
        f"`sha256sum {entry.file_name}` starts with {entry.sha256}, and put it in the cache folder as "
        f"{root / entry.file_name}"
    )
    if entry.layout in CONVERTED_LAYOUTS:
        fix += (
            f" (it is converted on first use); or run `drqa convert {entry.file_name} "
            f"{_stem(entry.file_name)}.safetensors` and pass that file's path instead of {entry.name!r}."
        )
    elif entry.layout == "torchvision":
        fix += f"; or pass the file's path (model.init=/path/to/{entry.file_name}) instead of {entry.name!r}."
    else:
        fix += f"; or pass the file's path instead of {entry.name!r}."
    return fix + " DRQA_MIRROR=<base URL> makes <base URL>/" + entry.file_name + " the first URL tried."


def _header(entry: WeightsEntry) -> str:
    return f"expected file: {entry.file_name} (sha256 starting {entry.sha256})"


def _failure_message(entry: WeightsEntry, root: Path, failures: list[tuple[str, str]], url_note: str) -> str:
    lines = [f"could not download weights {entry.name!r}: " + ("every URL failed" if failures else "no URL to try")]
    lines += [f"  - {url}: {why}" for url, why in failures]
    if url_note:
        lines.append(f"  note: {url_note}")
    lines += [_header(entry), f"cache folder: {root}", _manual_fix(entry, root)]
    return "\n".join(lines)


def _offline_message(entry: WeightsEntry, root: Path, url_note: str) -> str:
    looked = [str(root / entry.cached_name)]
    looked += [str(p) for p in _source_candidates(entry, root) if str(p) not in looked]
    lines = [
        f"weights {entry.name!r} are not cached and downloads are disabled (DRQA_OFFLINE or HF_HUB_OFFLINE is set)",
        f"looked for: {', '.join(looked)}",
    ]
    if url_note:
        lines.append(f"note: {url_note}")
    lines += [_header(entry), f"cache folder: {root}", _manual_fix(entry, root)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- helpers


def _make_entry(
    name: str,
    urls: tuple[str, ...],
    sha256: str,
    layout: str,
    licence: str,
    file_name: str | None,
    description: str,
    size: int | None,
    url_source: Callable[[], str] | None,
) -> WeightsEntry:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"weights name {name!r} must start with a letter and use only letters, digits, '_', '.', '-'")
    if not urls and url_source is None:
        raise ValueError(f"weights {name!r}: give at least one URL")
    for url in urls:
        if urllib.parse.urlsplit(str(url)).scheme not in _URL_SCHEMES:
            raise ValueError(f"weights {name!r}: URL {url!r} must use one of {_URL_SCHEMES}")
    sha256 = str(sha256).strip().lower()
    if not _HEX_RE.match(sha256):
        raise ValueError(f"weights {name!r}: sha256 must be 8 to 64 hex digits (a full digest or a prefix), got {sha256!r}")
    if layout not in LAYOUTS:
        raise ValueError(f"weights {name!r}: layout must be one of {LAYOUTS}, got {layout!r}")
    if not licence or not str(licence).strip():
        raise ValueError(f"weights {name!r}: state the licence of the weights")
    if file_name is None:
        file_name = urllib.parse.unquote(Path(urllib.parse.urlsplit(urls[0]).path).name) if urls else ""
    if not file_name or file_name in (".", "..") or "/" in file_name or "\\" in file_name:
        raise ValueError(f"weights {name!r}: file_name {file_name!r} must be a plain file name")
    if file_name.endswith((".partial", ".lock")):
        raise ValueError(f"weights {name!r}: file_name {file_name!r} ends like one of our temporary files")
    if layout in CONVERTED_LAYOUTS and file_name.endswith(".safetensors"):
        raise ValueError(f"weights {name!r}: a {layout} checkpoint to convert cannot be named {file_name!r}")
    if size is not None and (not isinstance(size, int) or size <= 0):
        raise ValueError(f"weights {name!r}: size must be a positive number of bytes")
    return WeightsEntry(
        name=name,
        urls=tuple(str(u) for u in urls),
        sha256=sha256,
        layout=layout,
        licence=str(licence),
        file_name=file_name,
        description=description,
        size=size,
        url_source=url_source,
    )


def _add(entry: WeightsEntry) -> WeightsEntry:
    existing = _REGISTRY.get(entry.name)
    if existing is not None:
        if existing == entry:
            return existing
        raise ValueError(
            f"weights name {entry.name!r} is already registered with other settings ({existing}); "
            "pick another name"
        )
    _REGISTRY[entry.name] = entry
    return entry


def _with_runtime_urls(entry: WeightsEntry) -> tuple[WeightsEntry, str]:
    """The entry with URLs read from their owning library; a note when that library is missing."""
    if entry.url_source is None:
        return entry, ""
    try:
        url = entry.url_source()
    except (ImportError, OSError, RuntimeError, AttributeError) as exc:  # absent, or built for another torch
        note = f"torchvision is needed to know where {entry.name!r} is published (pip install torchvision)"
        return entry, f"{note}; importing it failed: {type(exc).__name__}: {exc}"
    file_name = urllib.parse.unquote(Path(urllib.parse.urlsplit(url).path).name)
    match = _NAME_HASH_RE.search(file_name)
    sha256 = match.group(1) if match else entry.sha256
    return replace(entry, urls=(url,) + entry.urls, file_name=file_name, sha256=sha256), ""


def _stem(file_name: str) -> str:
    for suffix in _CHECKPOINT_SUFFIXES:
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return Path(file_name).stem or file_name


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _matches(path: Path, sha256: str) -> bool:
    key = _stat_key(path)
    if key not in _VERIFIED:
        digest = sha256_file(path)
        if not digest.startswith(sha256):
            return False
        _VERIFIED[key] = digest
    return _VERIFIED[key].startswith(sha256)


@contextlib.contextmanager
def _exclusive(handle: IO[bytes]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on an open lock file (blocks while another process holds it)."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; downloads stay atomic, only the first one may be duplicated
        yield
        return
    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _torchvision_resnet50_url() -> str:
    import torchvision.models

    return torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url


# --------------------------------------------------------------------------- built-ins

_add(
    _make_entry(
        "ckdn_pipal",
        (
            "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/CKDN_model_best-38b27dc6.pth",
            "https://github.com/chaofengc/IQA-PyTorch/releases/download/v0.1-weights/CKDN_model_best-38b27dc6.pth",
        ),
        "38b27dc6",
        "pyiqa",
        "MIT (researchmm/CKDN, Zheng et al.); copy distributed by chaofengc/IQA-PyTorch",
        "CKDN_model_best-38b27dc6.pth",
        "CKDN trained on PIPAL by the paper's authors (ICCV 2021); scores in (0, 1), higher is better",
        None,
        None,
    )
)
_add(
    _make_entry(
        "imagenet_resnet50",
        (),
        "0676ba61",
        "torchvision",
        "BSD-3-Clause (torchvision); trained on ImageNet, whose terms of access may restrict use",
        "resnet50-0676ba61.pth",
        "torchvision ResNet50_Weights.IMAGENET1K_V1, the paper's init for training (model.init); not a DR-IQA model",
        None,
        _torchvision_resnet50_url,
    )
)
