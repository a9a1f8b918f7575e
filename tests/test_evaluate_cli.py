"""``drqa eval`` end to end through the CLI, on lists and images the test writes."""

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drqa_plugin import create_model, save_model
from drqa_plugin.cli import main
from drqa_plugin.data import DataError
from drqa_plugin.evaluation import evaluate_pairs, read_labelled_list
from drqa_plugin.metrics import correlate
from drqa_plugin.scorer import DRIQA

SIZE = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("ckdn_r50")
    path = tmp_path_factory.mktemp("w") / "model.safetensors"
    save_model(model, path)
    return path


def _write(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, SIZE)[None, :, None] * np.ones((SIZE, 1, 3))
    noisy = np.clip(base + rng.normal(scale=20 + seed % 7 * 5, size=base.shape), 0, 255)
    Image.fromarray(noisy.astype(np.uint8)).save(path)


@pytest.fixture()
def pipal_dir(tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "pipal"
    root.mkdir()
    lines = []
    for s, scene in enumerate(("A0001", "A0002")):
        for j in range(4):
            name = f"{scene}_0{j}_00.bmp"
            _write(root / name, 10 * s + j)
            _write(root / f"ref_{name}", 100 + s)
            lines.append(f"{name},{1000 + 50 * j + 7 * s}")
    lines.append("A0001_06_00.bmp,1400")  # dropped like the official code does
    (root / "list.txt").write_text("\n".join(lines) + "\n")
    return root, root / "list.txt"


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["eval", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_pipal_list_end_to_end(weights, pipal_dir, tmp_path, capsys):
    root, list_file = pipal_dir
    out_csv = tmp_path / "preds.csv"
    code, out, err = _run(capsys, "--weights", str(weights), "--list", str(list_file), "--root", str(root),
                          "--preprocess", "none", "--batch-size", "3", "--out", str(out_csv), "--quiet",
                          "--no-baselines")  # the model's Correlations table only (baseline rows: test_baselines.py)
    assert code == 0, err
    assert "pairs scored: 8/8" in out and "SRCC" in out and "groups=2 skipped=0" in out
    with open(out_csv) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8 and {r["group"] for r in rows} == {"A0001", "A0002"}
    # The printed metrics are those of the written predictions, which are the scorer's own scores.
    scorer = DRIQA(str(weights), preprocess="none")
    direct = scorer([r["restored"] for r in rows], [r["degraded"] for r in rows]).numpy()
    preds = np.array([float(r["pred"]) for r in rows])
    np.testing.assert_allclose(preds, direct, rtol=1e-6)
    expected = correlate(direct, [float(r["mos"]) for r in rows], [r["group"] for r in rows])
    assert f"{expected.srcc:7.4f}" in out and f"{expected.grouped_plcc:7.4f}" in out
    # evaluate_pairs (what the trainer can reuse) agrees with the CLI.
    pairs = read_labelled_list(list_file, root)
    again, result = evaluate_pairs(scorer, pairs, batch_size=4, progress=False)
    np.testing.assert_allclose(again, preds, rtol=1e-6)
    assert result.srcc == pytest.approx(expected.srcc)


def test_eval_csv_list_and_default_root(weights, tmp_path, capsys):
    rows = ["mos,degraded,restored,group"]
    for i in range(6):
        _write(tmp_path / f"out{i}.png", i)
        _write(tmp_path / f"in{i // 3}.png", 50 + i // 3)
        rows.append(f"{i * 0.1},in{i // 3}.png,out{i}.png,{'' if i < 3 else 'g2'}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    pairs = read_labelled_list(tmp_path / "list.csv")
    assert [p.group for p in pairs] == ["in0.png"] * 3 + ["g2"] * 3  # default group: degraded image
    code, out, err = _run(capsys, "--weights", str(weights), "--list", str(tmp_path / "list.csv"),
                          "--preprocess", "none", "--quiet", "--no-baselines")
    assert code == 0, err
    assert "pairs scored: 6/6" in out and "groups=2" in out


def test_eval_missing_and_malformed(weights, pipal_dir, tmp_path, capsys):
    root, list_file = pipal_dir
    (root / "ref_A0002_01_00.bmp").unlink()
    code, _, err = _run(capsys, "--weights", str(weights), "--list", str(list_file), "--quiet")
    assert code == 2 and "line 6" in err and "ref_A0002_01_00.bmp" in err
    bad = tmp_path / "bad.csv"
    bad.write_text("restored,degraded,mos\na.png,b.png,high\n")
    code, _, err = _run(capsys, "--weights", str(weights), "--list", str(bad), "--quiet")
    assert code == 2 and f"{bad}:2" in err and "not a number" in err
    bad.write_text("restored,degraded\na.png,b.png\n")
    with pytest.raises(DataError, match="lacks column"):
        read_labelled_list(bad)


def test_pipal_list_with_subfolders(tmp_path):
    root = tmp_path / "r"
    (root / "dist").mkdir(parents=True)
    (root / "matched").mkdir()
    for j in range(3):
        _write(root / "dist" / f"A0007_0{j}_00.png", j)
        _write(root / "matched" / f"deg_A0007_0{j}_00.png", 9)
    (root / "l.txt").write_text("".join(f"A0007_0{j}_00.png,{1100 + j}\n" for j in range(3)))
    from drqa_plugin.data import PIPALLayout

    layout = PIPALLayout(restored_dir="dist", degraded_dir="matched", degraded_prefix="deg_")
    pairs = read_labelled_list(root / "l.txt", layout=layout)
    assert [p.degraded.name for p in pairs] == [f"deg_A0007_0{j}_00.png" for j in range(3)]
    assert all(p.restored.parent.name == "dist" and p.group == "A0007" for p in pairs)
    with pytest.raises(DataError, match="missing"):
        read_labelled_list(root / "l.txt")  # default layout: files are not in ROOT itself


def test_eval_unreadable_image(weights, pipal_dir, capsys):
    root, list_file = pipal_dir
    (root / "A0001_02_00.bmp").write_bytes(b"this is not a bitmap")
    code, out, err = _run(capsys, "--weights", str(weights), "--list", str(list_file), "--preprocess", "none",
                          "--quiet")
    assert code == 1
    assert "list line 3" in err and "A0001_02_00.bmp" in err and "could not be read" in err
    assert "pairs scored: 7/8" in out


@pytest.mark.slow  # runs the installed console script
def test_drqa_entry_point_help():
    # The installed console script reaches our parser (cheap: no model is built).
    exe = Path(sys.executable).with_name("drqa")
    assert exe.exists(), "the `drqa` console script is missing next to this Python: the entry point is broken"
    done = subprocess.run([str(exe), "eval", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "--list" in done.stdout and "restored,degraded,mos" in done.stdout


def test_eval_min_group_size_decides_which_groups_count(weights, tmp_path, capsys):
    """--min-group-size: a 2-pair group is skipped at the default 3 and counted at 2 (README promise)."""
    rows = ["restored,degraded,mos,group"]
    for i in range(6):
        _write(tmp_path / f"out{i}.png", i)
        _write(tmp_path / f"in{i % 2}.png", 70 + i % 2)
        rows.append(f"out{i}.png,in{i % 2}.png,{(i * 37) % 11},{'big' if i < 4 else 'small'}")
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    out_csv = tmp_path / "preds.csv"
    args = ("--weights", str(weights), "--list", str(tmp_path / "list.csv"), "--preprocess", "none", "--quiet",
            "--out", str(out_csv), "--no-baselines")
    code, out3, err = _run(capsys, *args, "--min-group-size", "3")
    assert code == 0, err
    code, out2, err = _run(capsys, *args, "--min-group-size", "2")
    assert code == 0, err
    with open(out_csv) as fh:
        written = list(csv.DictReader(fh))
    preds = [float(r["pred"]) for r in written]
    mos, groups = [float(r["mos"]) for r in written], [r["group"] for r in written]
    for size, out, counted in ((3, out3, "groups=1 skipped=1"), (2, out2, "groups=2 skipped=0")):
        expected = correlate(preds, mos, groups, min_group_size=size)
        assert counted in out
        assert re.search(rf"grouped\s+{expected.grouped_srcc:7.4f} {expected.grouped_plcc:7.4f}", out), out
    assert correlate(preds, mos, groups, 3).grouped_srcc != correlate(preds, mos, groups, 2).grouped_srcc


def test_eval_reference_check_scores_each_restoration_against_another_inputs_reference(weights, pipal_dir, capsys):
    from drqa_plugin.baselines import OTHER_REFERENCE, other_input_references

    root, list_file = pipal_dir
    code, out, err = _run(capsys, "--weights", str(weights), "--list", str(list_file), "--root", str(root),
                          "--preprocess", "none", "--quiet", "--reference-check")
    assert code == 0, err
    line = next(row for row in out.splitlines() if row.startswith(OTHER_REFERENCE))
    # The row is the model's scores with the references swapped between the two scenes.
    pairs = read_labelled_list(list_file, root)
    other = other_input_references([p.group for p in pairs])
    assert [pairs[j].group for j in other] == ["A0002"] * 4 + ["A0001"] * 4
    scorer = DRIQA(str(weights), preprocess="none")
    swapped = scorer([p.restored for p in pairs], [pairs[j].degraded for j in other]).numpy()
    expected = correlate(swapped, [p.mos for p in pairs], [p.group for p in pairs])
    assert f"{expected.srcc:7.4f}" in line and f"{expected.grouped_srcc:7.4f}" in line
    # Without the flag there is no such row (it costs a second pass over the pairs).
    code, out, _ = _run(capsys, "--weights", str(weights), "--list", str(list_file), "--root", str(root),
                        "--preprocess", "none", "--quiet")
    assert code == 0 and OTHER_REFERENCE not in out
