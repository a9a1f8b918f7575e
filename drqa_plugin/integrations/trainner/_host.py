"""Find a traiNNer-redux checkout and import it, and fill its registries safely.

traiNNer-redux is not on the package index: users clone it and run ``train.py``
from the clone, so its ``traiNNer`` package is importable because the clone is
``sys.path[0]``. We do the same: the checkout named by ``--trainner PATH`` or
``$TRAINNER_REDUX_DIR`` goes first on ``sys.path``. An already importable
``traiNNer`` (a clone installed with ``pip install -e``) is used as it is.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from drqa_plugin.errors import MissingFileError
from drqa_plugin.integrations.common import register_once

ENV_VAR = "TRAINNER_REDUX_DIR"
CLONE_HINT = (
    "traiNNer-redux is not on PyPI: git clone https://github.com/the-database/traiNNer-redux, "
    f"install its dependencies, and pass --trainner PATH or set {ENV_VAR}"
)


def locate(path: str | os.PathLike | None = None) -> Path | None:
    """The checkout named by ``path`` or ``$TRAINNER_REDUX_DIR``; None when neither is set.

    Raises:
        MissingFileError: the named folder is not a traiNNer-redux checkout.
    """
    raw = path if path is not None else os.environ.get(ENV_VAR)
    if not raw:
        return None
    root = Path(raw).expanduser().resolve()
    if not (root / "traiNNer" / "__init__.py").is_file():
        source = "--trainner" if path is not None else ENV_VAR
        raise MissingFileError(f"{source}={raw}: not a traiNNer-redux checkout (no traiNNer/__init__.py in {root})")
    return root


def check_available(path: str | os.PathLike | None = None) -> None:
    """Fail fast (no import) when no checkout is named and ``traiNNer`` is not importable.

    Raises:
        MissingFileError: as :func:`import_trainner` would, without its import time.
    """
    if locate(path) is None and "traiNNer" not in sys.modules and importlib.util.find_spec("traiNNer") is None:
        raise MissingFileError(CLONE_HINT)


def import_trainner(path: str | os.PathLike | None = None, *, first_on_path: bool = False) -> Path:
    """Import traiNNer-redux (its loss, metric and model modules) and return its checkout folder.

    The checkout is appended to ``sys.path`` (its top-level ``train.py``/``test.py``
    must not shadow other modules in a library user's process); the launcher puts it
    first, as ``python train.py`` does, so traiNNer's own ``scripts`` package wins.

    Raises:
        MissingFileError: no checkout is named and ``traiNNer`` is not importable, or
            the named folder is not a checkout.
        ImportError: one of traiNNer-redux's own dependencies is missing (named).
    """
    # Without an explicit path, a traiNNer already imported (by us or the caller) is the one.
    root = None if path is None and "traiNNer" in sys.modules else locate(path)
    if root is not None:
        loaded = sys.modules.get("traiNNer")
        if loaded is not None and Path(loaded.__file__ or "").resolve().parent.parent != root:
            raise MissingFileError(
                f"traiNNer is already imported from {Path(loaded.__file__ or '?').parent.parent}, not {root}"
            )
        if first_on_path:
            if str(root) in sys.path:
                sys.path.remove(str(root))
            sys.path.insert(0, str(root))
        elif str(root) not in sys.path:
            sys.path.append(str(root))
    elif importlib.util.find_spec("traiNNer") is None:
        raise MissingFileError(CLONE_HINT)
    try:
        for module in ("traiNNer.losses", "traiNNer.metrics", "traiNNer.models", "traiNNer.data"):
            importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] == "traiNNer":
            raise
        raise ImportError(
            f"traiNNer-redux needs {exc.name!r}, which is not installed: install the dependencies in its "
            "pyproject.toml (see integrations/trainner/README.md for the list)"
        ) from exc
    import traiNNer

    return Path(traiNNer.__file__ or "").resolve().parent.parent


def register_in(registry: Any, obj: Any) -> Any:
    """Register ``obj`` under its lower-cased name (as traiNNer-redux does), once.

    A second registration of our own object is a no-op; a name held by somebody
    else's object is an error that says who holds it.
    """
    return register_once(registry, obj, obj.__name__.lower(), host="traiNNer-redux's ")
