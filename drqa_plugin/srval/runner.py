"""``drqa validate`` without argparse: plan, run this process's share, merge, write the outputs.

The unit of work is one (checkpoint, LQ image) pair: super-resolve the LQ image (tiled),
round the output to 8 bits as an image file would store it, score it against its own LQ
image with DR-IQA, and against GT where given (PSNR/SSIM). Work is split across processes
and resumed through :mod:`drqa_plugin.srval.shards`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from drqa_plugin.constants import IMAGE_SUFFIXES
from drqa_plugin.errors import ConfigError, DataError, ImageInputError, MissingFileError
from drqa_plugin.files import atomic_path
from drqa_plugin.images import images_in, read_image, to_uint8
from drqa_plugin.srval import report as rpt
from drqa_plugin.srval.checkpoints import (
    Checkpoint,
    CheckpointError,
    SRModel,
    find_checkpoints,
    load_basicsr_options,
    load_sr_model,
)
from drqa_plugin.srval.dist import Dist
from drqa_plugin.srval.dist import current as current_dist
from drqa_plugin.srval.metrics import fit_gt, psnr, ssim, summary_stats
from drqa_plugin.srval.qmap import DEFAULT_TILE, quality_map, render_map
from drqa_plugin.srval.shards import Merged, ShardStore, ShardWriter
from drqa_plugin.srval.tiling import super_resolve

SCORE_FIELDS = ("checkpoint", "iteration", "image", "driqa")
GT_FIELDS = ("psnr", "ssim")
SUMMARY_FIELDS = ("checkpoint", "iteration", "n", "failures", "driqa_mean", "driqa_median", "driqa_p5")
GT_SUMMARY_FIELDS = ("psnr_mean", "psnr_median", "ssim_mean")
PLOT_FILE = "driqa_vs_iteration.png"
REPORT_FILE = "report.html"


@dataclass
class ValidateOptions:
    """Everything ``drqa validate`` needs (see ``drqa validate --help`` for each)."""

    models: Sequence[str]
    lq: Path
    out: Path
    weights: str = "ckdn_pipal"
    gt: Path | None = None
    lq_suffix: str = ""
    basicsr_opt: Path | None = None
    tile: int = 512
    tile_overlap: int = 16
    save_images: bool = False
    maps: bool = False
    map_tile: int = DEFAULT_TILE
    map_stride: int | None = None
    crop_border: int = 0
    report_images: int = 3
    preprocess: str = "ckdn"
    device: str = "auto"
    dtype: str = "fp32"
    reference_interpolation: str = "bicubic"
    batch_size: int = 8
    progress: bool = True

    def settings(self) -> dict[str, Any]:
        """The options that decide the numbers: a resume with other values is refused."""
        weights = Path(self.weights).expanduser()
        return {
            "weights": str(weights.resolve()) if weights.is_file() else self.weights,
            "gt": str(Path(self.gt).resolve()) if self.gt else None,
            "lq_suffix": self.lq_suffix,
            "basicsr_opt": str(Path(self.basicsr_opt).resolve()) if self.basicsr_opt else None,
            "crop_border": self.crop_border,
            "preprocess": self.preprocess,
            "dtype": self.dtype,
            "reference_interpolation": self.reference_interpolation,
        }

    def check(self) -> None:
        if self.tile < 0 or self.tile_overlap < 0:
            raise ConfigError(f"--tile and --tile-overlap must be >= 0, got {self.tile} and {self.tile_overlap}")
        if self.map_tile < 1 or (self.map_stride is not None and self.map_stride < 1):
            raise ConfigError("--map-tile and --map-stride must be >= 1")
        if self.crop_border < 0 or self.report_images < 0 or self.batch_size < 1:
            raise ConfigError("--crop-border and --report-images must be >= 0, --batch-size >= 1")


@dataclass(frozen=True)
class Item:
    checkpoint: Checkpoint
    image: Path
    gt: Path | None

    @property
    def key(self) -> str:
        return f"{self.checkpoint.key}|{self.image.name}"


@dataclass
class Plan:
    checkpoints: list[Checkpoint]
    images: list[Path]
    items: list[Item]
    failures: list[dict[str, Any]]  # found while planning (LQ without GT), not stored in shards


@dataclass
class ValidateResult:
    """What the main process merged and wrote."""

    summary: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    failures: list[dict[str, Any]]
    best: dict[str, Any] | None
    worst: dict[str, Any] | None
    files: dict[str, Path]
    done_before: int = 0
    merged: Merged = field(default_factory=Merged)

    @property
    def exit_code(self) -> int:
        return 1 if self.failures else 0


# ----------------------------------------------------------------------------- plan


def lq_images(path: Path) -> list[Path]:
    """The LQ images: one file, or the images directly inside a folder (sorted)."""
    if not path.exists():
        raise MissingFileError(f"--lq not found: {path}")
    images = [path] if path.is_file() else images_in(path)
    if not images:
        raise DataError(f"no images in {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return images


def plan_validation(opts: ValidateOptions) -> Plan:
    """Checkpoints x LQ images, each LQ image paired with its GT by name when ``gt`` is given."""
    checkpoints = find_checkpoints(opts.models)
    images = lq_images(Path(opts.lq))
    failures: list[dict[str, Any]] = []
    gt_of: dict[str, Path | None] = {p.name: None for p in images}
    if opts.gt is not None:
        gt_dir = Path(opts.gt)
        if not gt_dir.is_dir():
            raise MissingFileError(f"--gt must be a folder of GT images: {gt_dir}")
        by_stem: dict[str, list[Path]] = {}
        for p in images_in(gt_dir):
            by_stem.setdefault(p.stem, []).append(p)
        for image in images:
            stem = image.stem
            if opts.lq_suffix and stem.endswith(opts.lq_suffix):
                stem = stem[: -len(opts.lq_suffix)]
            found = by_stem.get(stem, [])
            if len(found) == 1:
                gt_of[image.name] = found[0]
                continue
            reason = (f"no GT image named {stem}.* in {gt_dir}" if not found
                      else f"several GT images named {stem}.* in {gt_dir}: {', '.join(p.name for p in found)}")
            failures.append({"stage": "gt", "checkpoint": "*", "image": image.name, "reason": reason})
            gt_of.pop(image.name)
    items = [Item(c, image, gt_of[image.name]) for c in checkpoints for image in images if image.name in gt_of]
    return Plan(checkpoints, images, items, failures)


# ----------------------------------------------------------------------------- run


def run_validation(opts: ValidateOptions, dist: Dist | None = None,
                   log: Callable[[str], None] | None = None) -> ValidateResult | None:
    """Plan, do this process's share, and (main process) merge and write every output.

    Returns the result on the main process and None on the others.
    """
    opts.check()
    dist = dist or current_dist(cpu=str(opts.device) == "cpu")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    plan = plan_validation(opts)
    basicsr_options = load_basicsr_options(opts.basicsr_opt) if opts.basicsr_opt else None
    out = Path(opts.out)
    store = ShardStore(out, dist, opts.settings(), command="validate")
    out_files = _wanted_files(opts)
    mine, done_before = store.plan(plan.items, key=lambda item: item.key,
                                   complete=lambda item: all((out / f(item)).is_file() for f in out_files))
    if dist.is_main and done_before:
        log(f"resuming {out}: {done_before} of {len(plan.items)} (checkpoint, image) pairs already done")
    scored_before = sum(item.key in store.done for item in plan.items)
    if dist.is_main and scored_before > done_before:
        log(f"{scored_before - done_before} scored pair(s) lack their --maps/--save-images picture: making them")
    device = dist.resolve_device(opts.device)
    worker = _Worker(opts, device, basicsr_options)
    with store.writer() as writer:
        worker.run(mine, writer, progress=opts.progress and dist.is_main, done=store.done)
    dist.barrier()
    if not dist.is_main:
        return None
    merged = store.merge()
    result = finish(opts, plan, merged, worker, log)
    result.done_before = done_before
    return result


class _Worker:
    """One process's models and scorers; runs items and writes their records."""

    def __init__(self, opts: ValidateOptions, device: torch.device, basicsr_options: dict | None) -> None:
        self.opts = opts
        self.device = device
        self.basicsr_options = basicsr_options
        self._network: Any = None
        self._scorers: dict[str, Any] = {}
        self._model_key: str | None = None
        self._model: SRModel | CheckpointError | None = None

    def _scorer(self, preprocess: str) -> Any:
        """A DRIQA scorer (loaded on first use: a process with nothing to do never loads the weights)."""
        if preprocess not in self._scorers:
            from drqa_plugin.scorer import DRIQA
            from drqa_plugin.weights import load_model

            if self._network is None:
                self._network = load_model(self.opts.weights)
            self._scorers[preprocess] = DRIQA(
                self._network, preprocess=preprocess, device=self.device, dtype=self.opts.dtype,  # type: ignore[arg-type]
                reference_interpolation=self.opts.reference_interpolation,
            )
        return self._scorers[preprocess]

    @property
    def scorer(self) -> Any:
        return self._scorer(self.opts.preprocess)

    @property
    def map_scorer(self) -> Any:
        return self._scorer("none")

    def model(self, checkpoint: Checkpoint) -> SRModel | CheckpointError:
        if self._model_key != checkpoint.key:
            self._model = None
            _free(self.device)
            try:
                self._model = load_sr_model(checkpoint.path, self.device, self.basicsr_options)
            except CheckpointError as exc:
                self._model = exc
            self._model_key = checkpoint.key
        assert self._model is not None
        return self._model

    def run(self, items: Sequence[Item], writer: ShardWriter, progress: bool,
            done: Collection[str] = frozenset()) -> None:
        """Process ``items``; those in ``done`` already have a row and only get their missing files."""
        from tqdm import tqdm

        for item in tqdm(items, desc="validating", unit="image", disable=not progress):
            self.process(item, writer, write_row=item.key not in done)

    def process(self, item: Item, writer: ShardWriter, write_row: bool = True) -> None:
        ckpt, name = item.checkpoint, item.image.name

        def fail(stage: str, reason: str, same_for: str | None = None) -> None:
            # A failure that is the same for every checkpoint (an unreadable LQ or GT image) or for
            # every image (an unloadable checkpoint) gets one id, so it is reported once.
            if same_for == "checkpoints":
                failure_id, where = f"{stage}|{name}", {"checkpoint": "*", "image": name}
            elif same_for == "images":
                failure_id, where = f"{stage}|{ckpt.key}", {"checkpoint": ckpt.key, "image": "*"}
            else:
                failure_id, where = f"{stage}|{item.key}", {"checkpoint": ckpt.key, "image": name}
            writer.failure(item.key, failure_id, reason, stage=stage, **where)

        model = self.model(ckpt)
        if isinstance(model, CheckpointError):
            return fail("checkpoint", str(model), same_for="images")
        try:
            lq_array = read_image(item.image)
        except ImageInputError as exc:
            return fail("lq", str(exc), same_for="checkpoints")
        lq = _to_tensor(lq_array)
        try:
            sr = super_resolve(model, lq, model.scale, self.opts.tile, self.opts.tile_overlap)
        except Exception as exc:  # noqa: BLE001 - any user model can fail on any input (OOM, shapes, ...)
            _free(self.device)
            return fail("model", f"{model.describe()} failed on {name}: {type(exc).__name__}: {_first_line(exc)}")
        sr_float = sr.float().div_(255.0).unsqueeze(0)
        try:
            score = float(self.scorer(sr_float, lq)[0])
        except ImageInputError as exc:
            return fail("score", f"DR-IQA cannot score {name}: {exc}")
        row: dict[str, Any] = {"driqa": score, "model": model.describe()}
        if item.gt is not None:
            try:
                gt = fit_gt(_to_tensor(read_image(item.gt))[0].mul(255).round().to(torch.uint8),
                            (sr.shape[-2], sr.shape[-1]), model.scale)
                row["psnr"] = psnr(sr, gt, self.opts.crop_border)
                row["ssim"] = ssim(sr, gt, self.opts.crop_border)
            except ImageInputError as exc:
                return fail("gt", str(exc), same_for="checkpoints")
            except ValueError as exc:
                return fail("gt", f"{name} vs GT {item.gt.name}: {exc}")
        image = sr.permute(1, 2, 0).numpy()
        if self.opts.save_images:
            save_png(image, Path(self.opts.out) / sr_image_path(ckpt, item.image))
        if self.opts.maps:
            try:
                qmap = quality_map(self.map_scorer, sr_float, lq, self.opts.map_tile, self.opts.map_stride,
                                   self.opts.batch_size)
                render_map(image, qmap, Path(self.opts.out) / map_path(ckpt, item.image),
                           title=f"{ckpt.label} / {name}: DR-IQA {score:.4f}")
            except ImageInputError as exc:
                # The row stands; the missing map is reported under its own key, so it is not redone.
                writer.failure(f"map|{item.key}", f"map|{item.key}", str(exc), stage="map",
                               checkpoint=ckpt.key, image=name)
        if write_row:
            writer.row(item.key, row)


def _to_tensor(array: np.ndarray) -> Tensor:
    from drqa_plugin.preprocess import to_float_batch

    return to_float_batch(array)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else "")[:300]


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _wanted_files(opts: ValidateOptions) -> list[Callable[[Item], Path]]:
    """The per-item files the options ask for (a resume redoes items that lack one)."""
    wanted: list[Callable[[Item], Path]] = []
    if opts.save_images:
        wanted.append(lambda item: sr_image_path(item.checkpoint, item.image))
    if opts.maps:
        wanted.append(lambda item: map_path(item.checkpoint, item.image))
    return wanted


def sr_image_path(checkpoint: Checkpoint, image: Path) -> Path:
    return Path("images") / checkpoint.label / f"{image.stem}.png"


def map_path(checkpoint: Checkpoint, image: Path) -> Path:
    return Path("maps") / checkpoint.label / f"{image.stem}.png"


def save_png(image: np.ndarray, path: Path, max_side: int | None = None) -> Path:
    """Write an HWC uint8 array as PNG atomically, optionally shrunk to ``max_side``."""
    from PIL import Image

    pil = Image.fromarray(image)
    if max_side and max(pil.size) > max_side:
        factor = max_side / max(pil.size)
        pil = pil.resize((max(1, round(pil.width * factor)), max(1, round(pil.height * factor))), Image.Resampling.BICUBIC)
    with atomic_path(path, suffix=".tmp.png") as tmp:
        pil.save(tmp, format="PNG")
    return path


# ----------------------------------------------------------------------------- merge and outputs


def finish(opts: ValidateOptions, plan: Plan, merged: Merged, worker: _Worker | None,
           log: Callable[[str], None]) -> ValidateResult:
    """Write scores.csv, summary.csv, failures.csv, the plot and the report from the merged shards."""
    out = Path(opts.out)
    has_gt = opts.gt is not None
    labels = {c.key: c.label for c in plan.checkpoints}
    rows = []
    for item in plan.items:
        data = merged.rows.get(item.key)
        if data is None:
            continue
        row = {"checkpoint": item.checkpoint.label, "iteration": item.checkpoint.iteration,
               "image": item.image.name, "driqa": data.get("driqa"), "model": data.get("model")}
        if has_gt:
            row.update(psnr=data.get("psnr"), ssim=data.get("ssim"))
        rows.append(row)
    failures = list(plan.failures)
    names = {p.name for p in plan.images}
    for f in merged.failures:
        # Only failures of this run's checkpoints and images (the folder may hold older ones).
        if f.get("checkpoint", "*") not in labels and f.get("checkpoint") != "*":
            continue
        if f.get("image", "*") not in names and f.get("image") != "*":
            continue
        if f.get("stage") == "map" and not opts.maps:
            continue
        failures.append({"stage": f.get("stage", "?"), "checkpoint": labels.get(str(f.get("checkpoint")), "*"),
                         "image": f.get("image", "*"), "reason": f.get("reason", "")})
    failures.sort(key=lambda f: (f["stage"], f["checkpoint"], f["image"]))

    summary = summarise(plan, rows, has_gt)
    scored = [s for s in summary if s["n"] > 0]
    best = max(scored, key=lambda s: (s["driqa_mean"], s["iteration"] or -1)) if scored else None
    worst = min(scored, key=lambda s: (s["driqa_mean"], -(s["iteration"] or -1))) if scored else None
    for s in summary:
        s["best"] = int(best is not None and s["checkpoint"] == best["checkpoint"])

    files: dict[str, Path] = {}
    fields = SCORE_FIELDS + (GT_FIELDS if has_gt else ())
    files["scores"] = rpt.write_csv(out / "scores.csv", rows, fields)
    sum_fields = SUMMARY_FIELDS + (GT_SUMMARY_FIELDS if has_gt else ()) + ("best", "model", "path")
    files["summary"] = rpt.write_csv(out / "summary.csv", summary, sum_fields)
    files["failures"] = rpt.write_csv(out / "failures.csv", failures, rpt.FAILURE_FIELDS)
    files["plot"] = rpt.plot_scores(summary, out / PLOT_FILE, best["checkpoint"] if best else None, has_gt)
    sections = []
    if best is not None and opts.report_images > 0:
        chosen = [("Best", best)] + ([("Worst", worst)] if worst is not None and worst is not best else [])
        for title, s in chosen:
            sections.append(_report_section(opts, plan, rows, title, s, worker, log))
    files["report"] = rpt.write_html(out / REPORT_FILE, summary=summary,
                                     best=best["checkpoint"] if best else None,
                                     worst=worst["checkpoint"] if worst and worst is not best else None,
                                     plot=PLOT_FILE, sections=sections, failures=failures, has_gt=has_gt,
                                     settings=opts.settings())
    return ValidateResult(summary, rows, failures, best, worst, files, merged=merged)


def summarise(plan: Plan, rows: Sequence[dict[str, Any]], has_gt: bool) -> list[dict[str, Any]]:
    """One line per checkpoint: DR-IQA mean/median/5th percentile, images scored and failed."""
    by_label: dict[str, list[dict[str, Any]]] = {c.label: [] for c in plan.checkpoints}
    for row in rows:
        by_label[row["checkpoint"]].append(row)
    summary = []
    for c in plan.checkpoints:
        mine = by_label[c.label]
        stats = summary_stats(r["driqa"] for r in mine)
        line: dict[str, Any] = {"checkpoint": c.label, "iteration": c.iteration, "n": len(mine),
                                "failures": len(plan.images) - len(mine), "driqa_mean": stats["mean"],
                                "driqa_median": stats["median"], "driqa_p5": stats["p5"],
                                "model": mine[0].get("model") if mine else None, "path": str(c.path)}
        if has_gt:
            p = summary_stats(r.get("psnr") for r in mine)
            line.update(psnr_mean=p["mean"], psnr_median=p["median"],
                        ssim_mean=summary_stats(r.get("ssim") for r in mine)["mean"])
        summary.append(line)
    return summary


def _report_section(opts: ValidateOptions, plan: Plan, rows: Sequence[dict[str, Any]], title: str,
                    line: dict[str, Any], worker: _Worker | None, log: Callable[[str], None]) -> rpt.ReportSection:
    """The lowest-scoring images of one checkpoint, with LQ, SR output and quality map pictures."""
    out = Path(opts.out)
    checkpoint = next(c for c in plan.checkpoints if c.label == line["checkpoint"])
    worst_rows = sorted((r for r in rows if r["checkpoint"] == checkpoint.label), key=lambda r: r["driqa"])
    section = rpt.ReportSection(title, checkpoint.label)
    image_of = {p.name: p for p in plan.images}
    slug = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in checkpoint.label)
    for row in worst_rows[: opts.report_images]:
        image = image_of[row["image"]]
        example = rpt.Example(row["image"], row["driqa"], None, None, None, row.get("psnr"))
        lq_file = Path("report") / "lq" / f"{image.stem}.png"
        sr_file, map_file = sr_image_path(checkpoint, image), map_path(checkpoint, image)
        if not (out / sr_file).is_file():
            sr_file = Path("report") / slug / f"{image.stem}_sr.png"
        if not (out / map_file).is_file():
            map_file = Path("report") / slug / f"{image.stem}_map.png"
        try:
            lq_array = to_uint8(read_image(image))
            save_png(lq_array, out / lq_file, max_side=2048)
            example.lq = lq_file.as_posix()
            if not (out / sr_file).is_file() or not (out / map_file).is_file():
                _render_example(opts, worker, checkpoint, lq_array, out / sr_file, out / map_file, row)
            example.sr = sr_file.as_posix() if (out / sr_file).is_file() else None
            example.qmap = map_file.as_posix() if (out / map_file).is_file() else None
        except (ImageInputError, CheckpointError, RuntimeError, ValueError) as exc:
            example.note = f"pictures incomplete: {exc}"
            log(f"report: {checkpoint.label} / {image.name}: {exc}")
        section.examples.append(example)
    return section


def _render_example(opts: ValidateOptions, worker: _Worker | None, checkpoint: Checkpoint, lq_array: np.ndarray,
                    sr_path: Path, map_path_: Path, row: dict[str, Any]) -> None:
    if worker is None:
        raise RuntimeError("no worker to render with")
    model = worker.model(checkpoint)
    if isinstance(model, CheckpointError):
        raise model
    lq = _to_tensor(lq_array)
    sr = super_resolve(model, lq, model.scale, opts.tile, opts.tile_overlap)
    image = sr.permute(1, 2, 0).numpy()
    if not sr_path.is_file():
        save_png(image, sr_path, max_side=2048)
    if not map_path_.is_file():
        qmap = quality_map(worker.map_scorer, sr.float().div_(255.0).unsqueeze(0), lq, opts.map_tile,
                           opts.map_stride, opts.batch_size)
        render_map(image, qmap, map_path_, title=f"{checkpoint.label} / {row['image']}: DR-IQA {row['driqa']:.4f}")


def format_summary(result: ValidateResult, has_gt: bool) -> str:
    """The summary as an aligned text table for the terminal."""
    head = ["checkpoint", "iter", "n", "fail", "mean", "median", "p5"] + (["psnr", "ssim"] if has_gt else [])
    lines = [head]
    for s in result.summary:
        cells = [s["checkpoint"] + (" *" if s.get("best") else ""), rpt.fmt(s["iteration"]), str(s["n"]),
                 str(s["failures"]), rpt.fmt(s["driqa_mean"]), rpt.fmt(s["driqa_median"]), rpt.fmt(s["driqa_p5"])]
        if has_gt:
            cells += [rpt.fmt(s.get("psnr_mean"), 2), rpt.fmt(s.get("ssim_mean"))]
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                     for row in lines)


__all__ = [
    "Item",
    "Plan",
    "ValidateOptions",
    "ValidateResult",
    "finish",
    "format_summary",
    "plan_validation",
    "run_validation",
    "summarise",
]
