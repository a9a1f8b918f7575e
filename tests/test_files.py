"""The one atomic-write helper every writer in the package goes through."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from drqa_plugin.files import atomic_path, atomic_write_bytes, atomic_write_text


def test_writes_creates_parents_and_replaces(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    assert atomic_write_text(target, "first\n") == target
    assert target.read_text() == "first\n"
    atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "scores.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="writer died"):
        with atomic_path(target) as tmp:
            tmp.write_text("half a fi")
            raise RuntimeError("writer died")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]


def test_temporary_is_a_hidden_sibling_with_the_suffix_and_unique(tmp_path: Path) -> None:
    target = tmp_path / "plot.png"
    with atomic_path(target, suffix=".tmp.png") as first, atomic_path(target, suffix=".tmp.png") as second:
        assert first.parent == second.parent == tmp_path
        assert first.name.startswith(".plot.png.") and first.name.endswith(".tmp.png")
        assert first != second  # two writers of one path never share a partial file
        first.write_bytes(b"1")
        second.write_bytes(b"2")
    assert target.read_bytes() == b"1"  # the outer block renames last
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def test_mode_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        path = atomic_write_text(tmp_path / "x.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
