"""Validate SR checkpoints with DR-IQA, without ground truth (``drqa validate``).

Modules:

``checkpoints``  find checkpoints, parse iterations, load them safely (spandrel; BasicSR ``network_g``)
``tiling``       super-resolve in overlapping tiles with bounded memory
``metrics``      PSNR / SSIM against GT, summary statistics
``qmap``         DR-IQA over sliding windows, drawn as a heat overlay with a colour bar
``report``       CSV tables, the score-vs-iteration plot, the static HTML report
``dist``         rank / world / device of this process (Accelerate when launched with several)
``shards``       split work across processes, per-process shard files, resume, merge
``runner``       ``drqa validate`` as a function: :func:`run_validation`
``score``        the same distributed, resumable mode for ``drqa score`` (folders of pairs)
``options``      its command-line side (``--resume``), light to import

Nothing here imports torch-heavy modules at package import time beyond what each module needs.
"""

from __future__ import annotations

__all__ = ["checkpoints", "dist", "metrics", "options", "qmap", "report", "runner", "score", "shards", "tiling"]
