"""``drqa validate`` and the distributed/resumable machinery it shares with ``drqa score``.

Inputs are made here: tiny SR checkpoints of real architectures (spandrel's own Compact and
SPAN classes, BasicSR's MSRResNet) with random weights, LQ/GT images from scikit-image's
photos, and the random-weights CKDN of ``conftest.weights_file``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from drqa_plugin.cli import main
from drqa_plugin.errors import ConfigError, MissingFileError
from drqa_plugin.srval import runner
from drqa_plugin.srval.checkpoints import (
    CheckpointError,
    find_checkpoints,
    load_sr_model,
    parse_iteration,
    read_state_dict,
)
from drqa_plugin.srval.dist import Dist
from drqa_plugin.srval.metrics import psnr
from drqa_plugin.srval.shards import ShardStore
from drqa_plugin.srval.tiling import super_resolve, to_uint8

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train_distributed import _accelerate, _free_port  # noqa: E402
from validate_helpers import (  # noqa: E402
    compact_state,
    make_checkpoints,
    make_images,
    make_msrresnet,
    photo,
    save_basicsr_checkpoint,
    span_state,
)

REPO = Path(__file__).resolve().parents[1]
ITERATIONS = (1000, 2000, 3000)
N_IMAGES = 2
LQ_SIZE, SCALE = 48, 2
# Max abs difference between tiled (32 px tiles, overlap 16) and whole-image float output, measured
# on 64 px photos: Compact 6e-8 (receptive field radius 4 px, inside the overlap), SPAN 2.3e-5
# (radius ~20 px: the far context a tile lacks contributes almost nothing). uint8: at most 1 level.
TILE_ATOL = {"compact": 1e-6, "span": 1e-4}
LAUNCH_TIMEOUT = 240


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def validate(args: list[str], capsys: pytest.CaptureFixture | None = None) -> tuple[int, str, str]:
    code = main(["validate", "--quiet", *args])
    out, err = capsys.readouterr() if capsys is not None else ("", "")
    return code, out, err


# ----------------------------------------------------------------------------- units


@pytest.mark.parametrize(("name", "iteration"), [
    ("net_g_5000.pth", 5000), ("net_g_ema_12000.pth", 12000), ("net_g_5000_ema.pth", 5000),
    ("model_iter300.safetensors", 300), ("checkpoint-42.ckpt", 42), ("net_g_latest.pth", None),
    ("RealESRGAN_x4plus.pth", None), ("4x_foo.pth", None), ("800.pth", 800),
])
def test_parse_iteration(name: str, iteration: int | None) -> None:
    assert parse_iteration(name) == iteration


def test_find_checkpoints_labels_and_order(tmp_path: Path) -> None:
    for run in ("a", "b"):
        for it in (20, 5):
            save_basicsr_checkpoint(compact_state(0), tmp_path / run / "models" / f"net_g_{it}.pth")
    save_basicsr_checkpoint(compact_state(0), tmp_path / "a" / "models" / "net_g_latest.pth")
    found = find_checkpoints([str(tmp_path / "*" / "models" / "net_g_*.pth")])
    assert [c.label for c in found] == ["a/models/net_g_5", "b/models/net_g_5", "a/models/net_g_20",
                                       "b/models/net_g_20", "a/models/net_g_latest"]
    assert [c.iteration for c in found] == [5, 5, 20, 20, None]
    assert [c.label for c in find_checkpoints([str(tmp_path / "a" / "models")])] == [
        "net_g_5", "net_g_20", "net_g_latest"]
    with pytest.raises(MissingFileError, match="matches no checkpoint"):
        find_checkpoints([str(tmp_path / "nothing_*.pth")])


def test_spandrel_detects_the_test_models(tmp_path: Path) -> None:
    compact = save_basicsr_checkpoint(compact_state(0, scale=4), tmp_path / "compact.pth", key="params")
    span = save_basicsr_checkpoint(span_state(0, scale=2), tmp_path / "span.pth", key="params_ema")
    raw = tmp_path / "raw.pth"
    torch.save(compact_state(1, scale=2), raw)
    lq = torch.rand(1, 3, 20, 24)
    for path, arch, scale in ((compact, "RealESRGAN Compact", 4), (span, "SPAN", 2), (raw, "RealESRGAN Compact", 2)):
        model = load_sr_model(path)
        assert (model.architecture, model.scale, model.source) == (arch, scale, "spandrel")
        assert model(lq).shape == (1, 3, 20 * scale, 24 * scale)


def test_checkpoints_are_never_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "pickled_model.pth"
    torch.save(torch.nn.Conv2d(3, 3, 3), path)  # a whole module: needs arbitrary unpickling
    with pytest.raises(CheckpointError, match=r"weights_only=True"):
        read_state_dict(path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read .*junk.pth safely"):
        read_state_dict(tmp_path / "junk.pth")


@pytest.mark.parametrize("arch", ["compact", "span"])
def test_tiled_equals_whole_image(arch: str) -> None:
    state = compact_state(0, scale=2, feat=8, conv=2) if arch == "compact" else span_state(0, scale=2, feat=8)
    model = load_sr_model_from_state(state)
    lq = torch.from_numpy(photo("astronaut", 64).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
    whole = super_resolve(model, lq, 2, tile=0, out_dtype=torch.float32)
    tiled = super_resolve(model, lq, 2, tile=32, overlap=16, out_dtype=torch.float32)
    assert tiled.shape == whole.shape == (3, 128, 128)
    assert (tiled - whole).abs().max() <= TILE_ATOL[arch]
    # uint8 output (what is scored and saved): equal, up to a value rounding the other way at x.5
    diff = to_uint8(tiled).int() - to_uint8(whole).int()
    assert diff.abs().max() <= 1 and (diff != 0).float().mean() < 1e-3
    # Without context the seams show: the overlap is what makes tiling exact.
    seams = super_resolve(model, lq, 2, tile=32, overlap=0, out_dtype=torch.float32)
    assert (seams - whole).abs().max() > 1e-3


def load_sr_model_from_state(state: dict) -> object:
    from drqa_plugin.srval.checkpoints import _from_spandrel

    return _from_spandrel(state, torch.device("cpu"))


def test_psnr_matches_scikit_image() -> None:
    from skimage.metrics import peak_signal_noise_ratio

    a = torch.from_numpy(photo("coffee", 64).copy()).permute(2, 0, 1).contiguous()
    b = torch.from_numpy(photo("chelsea", 64).copy()).permute(2, 0, 1).contiguous()
    expected = peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=255)
    assert psnr(a, b) == pytest.approx(expected, abs=1e-9)
    assert psnr(a, a) == math.inf
    with pytest.raises(ValueError, match="one size"):
        psnr(a, b[:, :32])


def test_shards_ignore_torn_lines_and_supersede_failures(tmp_path: Path) -> None:
    store = ShardStore(tmp_path, Dist(), {"x": 1}, command="validate")
    mine, done = store.plan(["a", "b", "c"], key=str)
    assert (mine, done) == (["a", "b", "c"], 0)
    with store.writer() as w:
        w.row("a", {"v": 1})
        w.failure("b", "b-fail", "broken")
        w.failure("c", "c-fail", "broken too")
    with store.writer() as w:  # a second attempt: b now works
        w.row("b", {"v": 2})
    (store.shard_dir / "killed.jsonl").write_text('{"key": "c", "kind": "row", "time": 1, "da')  # torn last line
    merged = store.merge()
    assert merged.rows == {"a": {"v": 1}, "b": {"v": 2}}
    assert [f["id"] for f in merged.failures] == ["c-fail"]
    assert (merged.torn_lines, merged.duplicate_rows) == (1, 0)
    assert store.plan(["a", "b", "c"], key=str) == (["c"], 2)
    other = ShardStore(tmp_path, Dist(), {"x": 2}, command="validate")
    with pytest.raises(ConfigError, match=r"other settings \(x: 1 then, 2 now\)"):
        other.plan(["a"], key=str)


# ----------------------------------------------------------------------------- end to end, in process


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("validate_inputs")
    make_checkpoints(root / "models", ITERATIONS, scale=SCALE)
    make_images(root / "lq", root / "gt", N_IMAGES, LQ_SIZE, SCALE)
    return root


@pytest.fixture(scope="module")
def validated(inputs: Path, weights_file: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("validate_out") / "val"
    code = main(["validate", "--quiet", "--models", str(inputs / "models" / "net_g_*.pth"), "--lq",
                 str(inputs / "lq"), "--gt", str(inputs / "gt"), "--out", str(out), "--weights", str(weights_file),
                 "--tile", "32", "--save-images", "--maps", "--map-tile", "48", "--report-images", "2",
                 "--preprocess", "none"])
    return {"code": code, "out": out}


def test_validate_writes_scores_summary_plot(validated: dict, inputs: Path) -> None:
    out = validated["out"]
    assert validated["code"] == 0
    scores = read_csv(out / "scores.csv")
    assert list(scores[0]) == ["checkpoint", "iteration", "image", "driqa", "psnr", "ssim"]
    assert len(scores) == len(ITERATIONS) * N_IMAGES
    assert {(r["checkpoint"], r["iteration"]) for r in scores} == {(f"net_g_{i}", str(i)) for i in ITERATIONS}
    assert all(0.0 < float(r["driqa"]) < 1.0 for r in scores)
    summary = read_csv(out / "summary.csv")
    assert list(summary[0]) == ["checkpoint", "iteration", "n", "failures", "driqa_mean", "driqa_median", "driqa_p5",
                                "psnr_mean", "psnr_median", "ssim_mean", "best", "model", "path"]
    assert [r["iteration"] for r in summary] == [str(i) for i in ITERATIONS]
    for line in summary:
        mine = [float(r["driqa"]) for r in scores if r["checkpoint"] == line["checkpoint"]]
        assert float(line["driqa_mean"]) == pytest.approx(np.mean(mine), abs=1e-6)
        assert float(line["driqa_p5"]) == pytest.approx(np.percentile(mine, 5), abs=1e-6)
        assert (line["n"], line["failures"], line["model"]) == (str(N_IMAGES), "0", "RealESRGAN Compact x2 (spandrel)")
    assert read_csv(out / "failures.csv") == []
    with Image.open(out / "driqa_vs_iteration.png") as plot:
        assert plot.size[0] > 300


def test_validate_names_the_best_checkpoint(inputs: Path, weights_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture) -> None:
    code, out, _ = validate(["--models", str(inputs / "models"), "--lq", str(inputs / "lq"), "--out",
                             str(tmp_path / "v"), "--weights", str(weights_file), "--preprocess", "none",
                             "--report-images", "0"], capsys)
    summary = read_csv(tmp_path / "v" / "summary.csv")
    best = max(summary, key=lambda r: float(r["driqa_mean"]))
    assert code == 0
    assert [r["checkpoint"] for r in summary if r["best"] == "1"] == [best["checkpoint"]]
    assert f"best checkpoint: {best['checkpoint']} (iteration {best['iteration']})" in out


def test_validate_psnr_ssim_against_gt(validated: dict, inputs: Path, weights_file: Path) -> None:
    from skimage.metrics import peak_signal_noise_ratio

    from drqa_plugin.scorer import DRIQA

    out = validated["out"]
    rows = read_csv(out / "scores.csv")
    # The score is the one `drqa score` gives the saved output file against the LQ file.
    saved = DRIQA(str(weights_file), preprocess="none").score_pair(
        out / "images" / rows[0]["checkpoint"] / rows[0]["image"], inputs / "lq" / rows[0]["image"])
    assert saved == pytest.approx(float(rows[0]["driqa"]), abs=1e-6)
    for row in rows:
        sr = np.asarray(Image.open(out / "images" / row["checkpoint"] / row["image"]))
        gt = np.asarray(Image.open(inputs / "gt" / row["image"]))
        assert sr.shape == gt.shape == (LQ_SIZE * SCALE, LQ_SIZE * SCALE, 3)
        assert float(row["psnr"]) == pytest.approx(peak_signal_noise_ratio(gt, sr, data_range=255), abs=1e-5)
        assert 0.0 < float(row["ssim"]) <= 1.0


def test_validate_writes_maps(validated: dict) -> None:
    maps = sorted((validated["out"] / "maps").rglob("*.png"))
    assert len(maps) == len(ITERATIONS) * N_IMAGES
    with Image.open(maps[0]) as picture:
        rgb = np.asarray(picture.convert("RGB"))
    side = LQ_SIZE * SCALE
    assert rgb.shape[0] >= side and rgb.shape[1] >= side + 50  # the image with its overlay, and the colour bar
    assert rgb.std() > 10


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.slow
def test_report_renders_in_headless_chromium(validated: dict, tmp_path: Path) -> None:
    browser = _chromium()
    if browser is None:
        pytest.skip("no chromium found (Debian: apt-get install -y chromium)")
    report = validated["out"] / "report.html"
    html = report.read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 1 + 2 * 2 * 3  # the plot; best and worst: 2 images x (LQ, SR, map)
    assert all(not s.startswith(("/", "http:", "https:", "file:")) for s in sources)
    assert all((report.parent / s).is_file() for s in sources)
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--virtual-time-budget=10000", "--dump-dom", report.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-2000:]
    body = re.search(r"<body[^>]*>", proc.stdout)
    assert body is not None, proc.stdout[:2000]
    assert f'data-images="{len(sources)}"' in body.group(0)
    assert 'data-broken-images="0"' in body.group(0)
    assert "Best checkpoint by mean DR-IQA" in proc.stdout


def test_rerun_does_only_new_checkpoints(inputs: Path, weights_file: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in ("net_g_1000.pth", "net_g_2000.pth"):
        shutil.copy(inputs / "models" / name, models / name)
    args = ["--models", str(models / "net_g_*.pth"), "--lq", str(inputs / "lq"), "--out", str(tmp_path / "v"),
            "--weights", str(weights_file), "--preprocess", "none", "--report-images", "0"]
    assert validate(args, capsys)[0] == 0
    shutil.copy(inputs / "models" / "net_g_3000.pth", models / "net_g_3000.pth")  # training went on
    code, _, err = validate(args, capsys)
    assert code == 0 and f"{2 * N_IMAGES} of {3 * N_IMAGES} (checkpoint, image) pairs already done" in err
    store = ShardStore(tmp_path / "v", Dist(), {}, command="validate")
    assert sum(r["kind"] == "row" for r in store.records()) == 3 * N_IMAGES
    assert len(read_csv(tmp_path / "v" / "scores.csv")) == 3 * N_IMAGES
    code, _, err = validate([*args, "--save-images"], capsys)  # pictures asked for afterwards: made, no new rows
    assert code == 0 and f"{3 * N_IMAGES} scored pair(s) lack their --maps/--save-images picture" in err
    assert len(list((tmp_path / "v" / "images").rglob("*.png"))) == 3 * N_IMAGES
    assert sum(r["kind"] == "row" for r in store.records()) == 3 * N_IMAGES
    code, _, err = validate([*args[:-4], "--preprocess", "ckdn", "--report-images", "0"], capsys)
    assert code == 2 and "other settings (preprocess: 'none' then, 'ckdn' now)" in err


def test_bad_inputs_are_reported_and_the_rest_is_written(tmp_path: Path, weights_file: Path,
                                                          monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    models, lq, gt = tmp_path / "models", tmp_path / "lq", tmp_path / "gt"
    make_checkpoints(models, (100,), scale=SCALE)
    torch.save({"params": {"mystery.weight": torch.randn(4, 4)}}, models / "net_g_200.pth")  # unknown architecture
    torch.save(torch.nn.Conv2d(3, 3, 1), models / "net_g_300.pth")  # a pickled module, refused unread
    make_images(lq, gt, 1, LQ_SIZE, SCALE)  # astronaut.png: fine
    (lq / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # unreadable, although its GT exists
    shutil.copy(gt / "astronaut.png", gt / "broken.png")
    Image.fromarray(photo("coffee", LQ_SIZE)).save(lq / "orphan.png")  # no GT
    Image.fromarray(photo("rocket", 40)).save(lq / "large.png")  # the model fails on this one
    Image.fromarray(photo("rocket", 80)).save(gt / "large.png")

    real = runner.super_resolve

    def failing_on_large(model, x, *args, **kwargs):
        if x.shape[-1] == 40:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(runner, "super_resolve", failing_on_large)
    code, out, err = validate(["--models", str(models), "--lq", str(lq), "--gt", str(gt), "--out",
                               str(tmp_path / "v"), "--weights", str(weights_file), "--preprocess", "none",
                               "--map-tile", "48"], capsys)
    assert code == 1
    scores = read_csv(tmp_path / "v" / "scores.csv")
    assert [(r["checkpoint"], r["image"]) for r in scores] == [("net_g_100", "astronaut.png")]
    failures = {(f["stage"], f["checkpoint"], f["image"]): f["reason"] for f in read_csv(tmp_path / "v" / "failures.csv")}
    assert set(failures) == {("checkpoint", "net_g_200", "*"), ("checkpoint", "net_g_300", "*"),
                             ("lq", "*", "broken.png"), ("gt", "*", "orphan.png"), ("model", "net_g_100", "large.png")}
    assert "spandrel does not recognise the architecture" in failures[("checkpoint", "net_g_200", "*")]
    assert "--basicsr-opt" in failures[("checkpoint", "net_g_200", "*")]
    assert "weights_only=True" in failures[("checkpoint", "net_g_300", "*")]
    assert "cannot read image" in failures[("lq", "*", "broken.png")]
    assert "no GT image named orphan.*" in failures[("gt", "*", "orphan.png")]
    assert "CUDA out of memory (simulated)" in failures[("model", "net_g_100", "large.png")]
    assert err.count("error: ") == 5
    assert "best checkpoint: net_g_100" in out
    summary = {r["checkpoint"]: r for r in read_csv(tmp_path / "v" / "summary.csv")}
    assert [(summary[c]["n"], summary[c]["failures"]) for c in ("net_g_100", "net_g_200", "net_g_300")] == [
        ("1", "3"), ("0", "4"), ("0", "4")]
    # The report made its own pictures for the best checkpoint (no --save-images / --maps given).
    assert len(list((tmp_path / "v" / "report").rglob("*.png"))) == 3


def test_basicsr_option_file_fallback(tmp_path: Path, weights_file: Path, inputs: Path,
                                      capsys: pytest.CaptureFixture) -> None:
    ckpt, opt = make_msrresnet(tmp_path / "msr")
    common = ["--models", str(ckpt), "--lq", str(inputs / "lq" / "coffee.png"), "--weights", str(weights_file),
              "--preprocess", "none", "--report-images", "0"]
    code, _, err = validate([*common, "--out", str(tmp_path / "without")], capsys)
    assert code == 1 and "spandrel does not recognise" in err and "--basicsr-opt" in err
    code, out, _ = validate([*common, "--out", str(tmp_path / "with"), "--basicsr-opt", str(opt)], capsys)
    assert code == 0 and "best checkpoint: net_g_400 (iteration 400)" in out
    (line,) = read_csv(tmp_path / "with" / "summary.csv")
    assert (line["n"], line["model"]) == ("1", "MSRResNet x2 (basicsr)")


def test_basicsr_option_file_that_does_not_fit(tmp_path: Path) -> None:
    ckpt, _ = make_msrresnet(tmp_path / "msr")
    wrong = {"network_g": {"type": "MSRResNet", "num_in_ch": 3, "num_out_ch": 3, "num_feat": 4, "num_block": 1,
                           "upscale": 2}}
    with pytest.raises(CheckpointError, match=r"do not fit network_g type MSRResNet \(wrong shape: conv_first"):
        load_sr_model(ckpt, basicsr_options=wrong)


def test_score_sharded_resumes(tmp_path: Path, weights_file: Path) -> None:
    from drqa_plugin.scorer import DRIQA, score_file_pairs
    from drqa_plugin.srval.score import score_file_pairs_sharded, shard_directory

    restored, degraded = tmp_path / "sr", tmp_path / "lq"
    make_images(degraded, restored, 3, 40, 2)
    (restored / "zz_broken.png").write_bytes(b"junk")
    shutil.copy(degraded / "coffee.png", degraded / "zz_broken.png")
    pairs = [(restored / p.name, degraded / p.name) for p in sorted(restored.iterdir())]
    scorer = DRIQA(str(weights_file), preprocess="none")
    settings = {"weights": str(weights_file)}
    scores, errors = score_file_pairs_sharded(scorer, pairs, tmp_path / "s.csv", settings=settings, progress=False,
                                              dist=Dist())
    reference, ref_errors = score_file_pairs(scorer, pairs, progress=False)
    np.testing.assert_allclose(scores[:3], reference[:3], atol=1e-6)
    assert list(errors) == list(ref_errors) == [3] and "cannot read image" in errors[3]
    store = ShardStore(shard_directory(tmp_path / "s.csv"), Dist(), settings, command="score")
    before = len(store.records())
    again, _ = score_file_pairs_sharded(scorer, pairs, tmp_path / "s.csv", settings=settings, progress=False,
                                        dist=Dist())
    assert len(store.records()) == before + 1  # only the failed pair was tried again
    np.testing.assert_array_equal(again[:3], scores[:3])


# ----------------------------------------------------------------------------- real launches


def _launch_cmd(*args: str) -> list[str]:
    return [*_accelerate(), "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher we started and its workers, by pid (torchrun starts workers in sessions of their own)."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for child in reversed(tree):  # workers first, so none outlives the launcher
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    if proc.poll() is None:
        proc.kill()


@pytest.mark.slow
def test_distributed_run_killed_and_resumed(tmp_path: Path, inputs: Path, weights_file: Path) -> None:
    lq = tmp_path / "lq"
    make_images(lq, None, 8, LQ_SIZE, SCALE)
    out = tmp_path / "val"
    cmd = _launch_cmd("-m", "drqa_plugin.cli", "validate", "--quiet", "--models", str(inputs / "models"), "--lq",
                      str(lq), "--out", str(out), "--weights", str(weights_file), "--report-images", "0")
    total = len(ITERATIONS) * 8
    store = ShardStore(out, Dist(), {}, command="validate")
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            rows = [r for r in store.records() if r["kind"] == "row"]
            if len({f for f in store.shard_files() if f.stat().st_size}) == 2 and len(rows) >= 3:
                break
            time.sleep(0.05)
    finally:
        _kill_tree(proc)  # the launcher and both workers, mid-way, as an OOM killer or a lost node would
        log = proc.communicate(timeout=60)[0].decode(errors="replace")
    done_when_killed = {r["key"] for r in store.records() if r["kind"] == "row"}
    assert 0 < len(done_when_killed) < total, log[-3000:]
    assert not (out / "scores.csv").exists()

    again = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming {out}: {len(done_when_killed)} of {total}" in again.stderr
    rows = [r for r in store.records() if r["kind"] == "row"]
    assert len(rows) == len({r["key"] for r in rows}) == total  # nothing done twice, nothing missing
    scores = read_csv(out / "scores.csv")
    assert len(scores) == len({(r["checkpoint"], r["image"]) for r in scores}) == total
    assert "best checkpoint: net_g_" in again.stdout


@pytest.mark.slow
def test_distributed_score(tmp_path: Path, weights_file: Path) -> None:
    from drqa_plugin.scorer import DRIQA, score_file_pairs

    restored, degraded = tmp_path / "sr", tmp_path / "lq"
    make_images(degraded, restored, 5, 40, 2)
    (restored / "broken.png").write_bytes(b"junk")
    shutil.copy(degraded / "coffee.png", degraded / "broken.png")
    out = tmp_path / "scores.csv"
    cmd = _launch_cmd(str(REPO / "tests" / "validate_helpers.py"), "score", "--quiet", "--weights", str(weights_file),
                      "--restored", str(restored), "--degraded", str(degraded), "--out", str(out),
                      "--preprocess", "none")
    proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=LAUNCH_TIMEOUT)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]  # one unreadable pair
    assert proc.stderr.count("cannot read image") == 1  # reported once, by the main process
    rows = [r for r in read_csv(out) if r["score"]]  # (failed pairs may be listed with an empty score)
    shards = list((tmp_path / "scores.csv.shards" / "shards").glob("*.jsonl"))
    assert len(rows) == 5 and len(shards) == 2
    pairs = [(restored / Path(r["restored"]).name, degraded / Path(r["restored"]).name) for r in rows]
    expected, _ = score_file_pairs(DRIQA(str(weights_file), preprocess="none"), pairs, progress=False)
    np.testing.assert_allclose([float(r["score"]) for r in rows], expected, atol=1e-5)
