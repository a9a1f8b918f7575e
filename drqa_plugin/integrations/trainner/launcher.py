"""Start-up of ``python -m drqa_plugin.integrations.trainner.train``: check, register, hand over.

traiNNer-redux is started the way its own ``python train.py -opt X.yml`` starts it:
its checkout first on ``sys.path``, its ``train.py`` loaded as a module and its
``train_pipeline`` called with the traiNNer-redux flags (``-opt``, ``--auto_resume``,
``--launcher``, ...) in ``sys.argv``. Two names inside *our* copy of that module
are pointed elsewhere, nothing in the ``traiNNer`` package is changed:

* ``build_model`` -> :func:`.models.build_model` (traiNNer's own choice of model,
  with the DR-IQA subclasses);
* when ``calculate_driqa`` is used and a validation set has no GT, the check that
  some validation set is paired also accepts traiNNer's single-image datasets (our
  option check still requires a paired set for every metric that needs GT).

Experiments go under the current directory, as when ``train.py`` runs from the clone.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from drqa_plugin.errors import DRQAError
from drqa_plugin.integrations.common import without_flag

USAGE = "python -m drqa_plugin.integrations.trainner.train [--trainner PATH] -opt OPTIONS.yml [traiNNer-redux flags]"


@dataclass(frozen=True)
class LaunchArgs:
    trainner: str | None
    option_file: Path
    trainner_argv: list[str]


def split_argv(argv: Sequence[str]) -> LaunchArgs:
    """Separate our ``--trainner PATH`` from traiNNer-redux's own arguments (left untouched)."""
    ours = argparse.ArgumentParser(add_help=False)
    ours.add_argument("--trainner", default=None)
    ours.add_argument("-opt", dest="opt")
    known, _ = ours.parse_known_args(list(argv))
    if not known.opt:
        raise SystemExit(f"usage: {USAGE}")
    return LaunchArgs(known.trainner, Path(known.opt), without_flag(list(argv), "--trainner"))


def load_script(path: Path, name: str) -> ModuleType:
    """A traiNNer-redux script (``train.py``) as a fresh module; its ``__main__`` block does not run."""
    if not path.is_file():
        raise DRQAError(f"{path} not found: the traiNNer-redux checkout has no {path.name}")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare_train_module(module: ModuleType, *, accept_lq_only_val: bool) -> ModuleType:
    """Point our copy of ``train.py`` at the DR-IQA models (and, if asked, at LQ-only validation sets)."""
    from traiNNer.data.single_image_dataset import SingleImageDataset

    from drqa_plugin.integrations.trainner.models import build_model

    module.build_model = build_model  # type: ignore[attr-defined]
    if accept_lq_only_val:
        # train.py refuses metrics unless a validation set is a PairedImageDataset; the
        # DR-IQA models validate single-image (LQ-only) sets too.
        paired: Any = module.PairedImageDataset  # type: ignore[attr-defined]
        module.PairedImageDataset = paired | SingleImageDataset  # type: ignore[attr-defined]
    return module


def prepare(argv: Sequence[str]) -> tuple[ModuleType, LaunchArgs]:
    """Import traiNNer-redux, register DR-IQA, check the options; a one-line SystemExit on any problem."""
    from drqa_plugin.config import read_yaml_mapping
    from drqa_plugin.integrations.trainner import register
    from drqa_plugin.integrations.trainner._host import check_available, import_trainner
    from drqa_plugin.integrations.trainner.validate import check_driqa_entries, check_with_trainner, decode_with_trainner

    args = split_argv(argv)
    try:
        check_available(args.trainner)
        options = read_yaml_mapping(args.option_file)
        use = check_driqa_entries(options)  # our keys first: no traiNNer-redux import needed
        root = import_trainner(args.trainner, first_on_path=True)
        register(root)
        decode_with_trainner(args.option_file)
        accept_lq_only = check_with_trainner(options, use)
        module = prepare_train_module(load_script(root / "train.py", "trainner_redux_train"),
                                      accept_lq_only_val=accept_lq_only)
    except (DRQAError, ImportError, ValueError, OSError, yaml.YAMLError) as exc:
        # A one-line reason instead of a traceback: nothing has started yet.
        raise SystemExit(f"drqa-plugin: {args.option_file}: {exc}") from exc
    sys.argv = [str(root / "train.py"), *args.trainner_argv]
    return module, args


def main(argv: Sequence[str] | None = None) -> None:
    module, _ = prepare(sys.argv[1:] if argv is None else argv)
    module.train_pipeline(os.getcwd())
