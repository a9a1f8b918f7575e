"""What ``drqa validate`` writes: CSV tables, the score-vs-iteration plot and a static HTML report.

The report is one HTML file with inline CSS and no external resource: pictures are PNG files
referenced by paths relative to the report, so the output folder can be copied or zipped and
opened anywhere. A small inline script counts pictures that failed to load and shows a notice
(it also leaves the counts on ``<body>`` as ``data-images`` / ``data-broken-images``).
"""

from __future__ import annotations

import csv
import html
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drqa_plugin.files import atomic_write_text
from drqa_plugin.srval.qmap import save_figure

FAILURE_FIELDS = ("stage", "checkpoint", "image", "reason")


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], fields: Sequence[str]) -> Path:
    """Write rows atomically; floats with 6 decimals, NaN/None as empty cells."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k)) for k in fields})
    return atomic_write_text(path, buffer.getvalue())


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if math.isnan(value) else (f"{value:.6f}" if math.isfinite(value) else str(value))
    return value


def fmt(value: Any, digits: int = 4) -> str:
    """A number for people: fixed digits, '-' for missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# ----------------------------------------------------------------------------- plot


def plot_scores(summary: Sequence[Mapping[str, Any]], path: Path, best_label: str | None, has_gt: bool) -> Path:
    """DR-IQA mean / median / 5th percentile (and PSNR on a second axis) against iteration."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    scored = [s for s in summary if s["n"] > 0]
    numbered = bool(scored) and all(s["iteration"] is not None for s in scored)
    xs = [s["iteration"] if numbered else i for i, s in enumerate(scored)]
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.add_subplot(111)
    if scored:
        ax.plot(xs, [s["driqa_mean"] for s in scored], "o-", color="tab:blue", label="DR-IQA mean")
        ax.plot(xs, [s["driqa_median"] for s in scored], "s--", color="tab:cyan", ms=4, label="DR-IQA median")
        ax.plot(xs, [s["driqa_p5"] for s in scored], "v:", color="tab:purple", ms=4, label="DR-IQA 5th percentile")
        for x, s in zip(xs, scored):
            if s["checkpoint"] == best_label:
                ax.plot([x], [s["driqa_mean"]], "*", color="gold", mec="black", ms=16, zorder=5, label="best")
    ax.set_xlabel("iteration" if numbered else "checkpoint")
    ax.set_ylabel("DR-IQA (higher = better)")
    if not numbered and scored:
        ax.set_xticks(xs)
        ax.set_xticklabels([s["checkpoint"] for s in scored], rotation=30, ha="right", fontsize=7)
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if has_gt and scored:
        ax2 = ax.twinx()
        psnr_means = [math.nan if s.get("psnr_mean") is None else float(s["psnr_mean"]) for s in scored]
        ax2.plot(xs, psnr_means, "d-", color="tab:red", ms=4, label="PSNR mean (GT)")
        ax2.set_ylabel("PSNR (dB)", color="tab:red")
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    if handles:
        ax.legend(handles, labels, fontsize=7, loc="best")
    ax.set_title("DR-IQA against training iteration", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- HTML


@dataclass
class Example:
    """One low-scoring image of a checkpoint, with its pictures (paths relative to the report)."""

    image: str
    score: float
    lq: str | None
    sr: str | None
    qmap: str | None
    psnr: float | None = None
    note: str = ""


@dataclass
class ReportSection:
    title: str
    checkpoint: str
    examples: list[Example] = field(default_factory=list)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}tr.best{background:#fff5c2;font-weight:600}
tr.worst{background:#fde2e2}.ex{display:grid;grid-template-columns:repeat(3,1fr);gap:.6em;margin:1em 0 2em}
.ex figure{margin:0}.ex img{width:100%;height:auto;image-rendering:auto;border:1px solid #ccc}
figcaption{font-size:.8em;color:#555}.note{color:#a00}#broken{background:#fde2e2;padding:.5em}
.muted{color:#777;font-size:.85em}
"""

_SCRIPT = """
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-broken-images', String(broken.length));
  if (broken.length) {
    var p = document.getElementById('broken');
    p.textContent = broken.length + ' picture(s) could not be loaded (was the folder moved apart?): ' +
      broken.map(function (i) { return i.getAttribute('src'); }).join(', ');
    p.hidden = false;
  }
});
"""


def write_html(path: Path, *, summary: Sequence[Mapping[str, Any]], best: str | None, worst: str | None,
               plot: str | None, sections: Sequence[ReportSection], failures: Sequence[Mapping[str, Any]],
               has_gt: bool, settings: Mapping[str, Any]) -> Path:
    """Write the static report page (atomically)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>DR-IQA checkpoint validation</title>",
        f"<style>{_CSS}</style></head><body>",
        '<p id="broken" hidden></p>',
        "<h1>DR-IQA checkpoint validation</h1>",
        f'<p class="muted">{e(_settings_line(settings))}</p>',
    ]
    if best:
        row = next(s for s in summary if s["checkpoint"] == best)
        parts.append(f"<p>Best checkpoint by mean DR-IQA: <b>{e(best)}</b>"
                     f"{' (iteration ' + str(row['iteration']) + ')' if row['iteration'] is not None else ''}, "
                     f"mean {fmt(row['driqa_mean'])} over {row['n']} image(s). Higher is better.</p>")
    else:
        parts.append('<p class="note">No checkpoint produced a score.</p>')
    parts.append("<h2>Summary</h2>")
    parts.append(_summary_table(summary, best, worst, has_gt))
    if plot:
        parts.append(f'<h2>Scores against iteration</h2><p><img src="{e(plot)}" alt="DR-IQA against iteration" '
                     'style="max-width:100%"></p>')
    for section in sections:
        parts.append(f"<h2>{e(section.title)}: {e(section.checkpoint)}, lowest-scoring images</h2>")
        if not section.examples:
            parts.append('<p class="muted">No scored images.</p>')
        for ex in section.examples:
            caption = f"{ex.image}: DR-IQA {fmt(ex.score)}" + (f", PSNR {fmt(ex.psnr, 2)} dB" if ex.psnr is not None else "")
            parts.append(f"<h3>{e(caption)}</h3>")
            if ex.note:
                parts.append(f'<p class="note">{e(ex.note)}</p>')
            parts.append('<div class="ex">')
            for src, what in ((ex.lq, "LQ input"), (ex.sr, "restored"), (ex.qmap, "DR-IQA map")):
                if src:
                    parts.append(f'<figure><img src="{e(src)}" alt="{e(what)} {e(ex.image)}">'
                                 f"<figcaption>{e(what)}</figcaption></figure>")
                else:
                    parts.append(f'<figure><p class="muted">no {e(what)}</p></figure>')
            parts.append("</div>")
    parts.append(f"<h2>Failures ({len(failures)})</h2>")
    if failures:
        parts.append("<table><tr>" + "".join(f"<th>{f}</th>" for f in FAILURE_FIELDS) + "</tr>")
        for f in failures[:200]:
            parts.append("<tr>" + "".join(f'<td style="text-align:left">{e(str(f.get(k, "")))}</td>'
                                          for k in FAILURE_FIELDS) + "</tr>")
        parts.append("</table>")
        if len(failures) > 200:
            parts.append(f'<p class="muted">... and {len(failures) - 200} more in failures.csv</p>')
    else:
        parts.append('<p class="muted">None.</p>')
    parts.append('<p class="muted">Tables: scores.csv, summary.csv, failures.csv. Made by drqa validate.</p>')
    parts.append(f"<script>{_SCRIPT}</script></body></html>")
    return atomic_write_text(path, "\n".join(parts) + "\n")


def _settings_line(settings: Mapping[str, Any]) -> str:
    shown = ("weights", "preprocess", "dtype", "gt")
    return "; ".join(f"{k}: {settings[k]}" for k in shown if settings.get(k) not in (None, ""))


def _summary_table(summary: Sequence[Mapping[str, Any]], best: str | None, worst: str | None, has_gt: bool) -> str:
    cols = [("checkpoint", "checkpoint", None), ("iteration", "iteration", None), ("n", "images", None),
            ("failures", "failures", None), ("driqa_mean", "DR-IQA mean", 4), ("driqa_median", "median", 4),
            ("driqa_p5", "5th pct", 4)]
    if has_gt:
        cols += [("psnr_mean", "PSNR mean", 2), ("ssim_mean", "SSIM mean", 4)]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(title)}</th>" for _, title, _ in cols) + "</tr>"]
    for s in summary:
        cls = ' class="best"' if s["checkpoint"] == best else (' class="worst"' if s["checkpoint"] == worst else "")
        cells = "".join(f"<td>{html.escape(fmt(s.get(k), d) if d else fmt(s.get(k)))}</td>" for k, _, d in cols)
        out.append(f"<tr{cls}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)
