"""``drqa validate``: which SR checkpoint is best on real LQ photos without GT, and where does each fail?"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from drqa_plugin.cli.common import add_runtime_arguments

EPILOG = """\
examples:
  drqa validate --models 'experiments/x/models/net_g_*.pth' --lq real_lq/ --out val/
  drqa validate --models 'experiments/x/models/net_g_*.pth' --lq lq/ --gt gt/ --out val/ --maps --save-images
  accelerate launch --multi_gpu --num_processes 8 -m drqa_plugin.cli validate --models ... --lq lq/ --out val/

Writes OUT/scores.csv, summary.csv, failures.csv, driqa_vs_iteration.png and report.html.
Run it again with the same --out to resume or to add new checkpoints: only what is missing is done.
Exit status: 0 all scored, 1 some checkpoint/image failed (see failures.csv), 2 nothing could be done.
"""


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "validate",
        help="rank SR checkpoints by DR-IQA on LQ images (no GT needed)",
        description=__doc__.split(": ", 1)[1],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--models", nargs="+", required=True, metavar="PATTERN",
                        help="checkpoint files, folders or glob patterns (quote them), e.g. 'models/net_g_*.pth'")
    parser.add_argument("--lq", required=True, type=Path, help="a folder of LQ images (or one image)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (reused to resume)")
    parser.add_argument("--gt", type=Path, default=None,
                        help="a folder of GT images, paired with LQ images by name: adds PSNR and SSIM")
    parser.add_argument("--lq-suffix", default="", help="strip this from LQ names before pairing with GT (e.g. x4)")
    parser.add_argument("--weights", default="ckdn_pipal",
                        help="DR-IQA weights: a drqa-plugin .safetensors file or a registered name (default: ckdn_pipal)")
    parser.add_argument("--basicsr-opt", type=Path, default=None, metavar="X.yml",
                        help="BasicSR option file whose network_g builds checkpoints spandrel does not recognise")
    tiling = parser.add_argument_group("super-resolution")
    tiling.add_argument("--tile", type=int, default=512,
                        help="LQ tile size in pixels for bounded memory; 0 runs whole images (default 512)")
    tiling.add_argument("--tile-overlap", type=int, default=16, help="LQ pixels of context around each tile (default 16)")
    tiling.add_argument("--save-images", action="store_true", help="keep the SR outputs in OUT/images/CHECKPOINT/")
    tiling.add_argument("--crop-border", type=int, default=0, help="pixels cut from each edge before PSNR/SSIM")
    maps = parser.add_argument_group("quality maps and report")
    maps.add_argument("--maps", action="store_true",
                      help="write a DR-IQA heat map per image to OUT/maps/CHECKPOINT/")
    maps.add_argument("--map-tile", type=int, default=288, help="map window size in output pixels (default 288)")
    maps.add_argument("--map-stride", type=int, default=None, help="map window step (default: half the window)")
    maps.add_argument("--report-images", type=int, default=3,
                      help="lowest-scoring images shown for the best and the worst checkpoint (default 3)")
    add_runtime_arguments(parser)
    for action in parser._actions:  # the shared options, as validate uses them
        if action.dest == "batch_size":
            action.help = "quality-map windows scored per forward pass (default 8)"
        elif action.dest == "device":
            action.help = "auto (default: each launched process's own GPU, else CUDA if present, else CPU), cpu, cuda:N"
    parser.set_defaults(func=run, device="auto")


def run(args: argparse.Namespace) -> int:
    from drqa_plugin.srval.runner import ValidateOptions, format_summary, run_validation

    opts = ValidateOptions(
        models=args.models, lq=args.lq, out=args.out, weights=args.weights, gt=args.gt, lq_suffix=args.lq_suffix,
        basicsr_opt=args.basicsr_opt, tile=args.tile, tile_overlap=args.tile_overlap, save_images=args.save_images,
        maps=args.maps, map_tile=args.map_tile, map_stride=args.map_stride, crop_border=args.crop_border,
        report_images=args.report_images, preprocess=args.preprocess, device=args.device, dtype=args.dtype,
        reference_interpolation=args.reference_interpolation, batch_size=args.batch_size, progress=not args.quiet,
    )
    result = run_validation(opts)
    if result is None:  # another process of a distributed launch: the main process reports
        return 0
    print(format_summary(result, has_gt=args.gt is not None))
    for message in result.failures[:20]:
        print(f"error: [{message['stage']}] {message['checkpoint']} / {message['image']}: {message['reason']}",
              file=sys.stderr)
    if len(result.failures) > 20:
        print(f"error: ... and {len(result.failures) - 20} more failures", file=sys.stderr)
    if result.best is not None:
        best = result.best
        iteration = f" (iteration {best['iteration']})" if best["iteration"] is not None else ""
        print(f"best checkpoint: {best['checkpoint']}{iteration}, DR-IQA mean {best['driqa_mean']:.4f} "
              f"over {best['n']} image(s)")
    else:
        print("best checkpoint: none (no checkpoint produced a score)")
    print(f"wrote {args.out}/: scores.csv, summary.csv, failures.csv ({len(result.failures)}), "
          f"driqa_vs_iteration.png, report.html")
    return result.exit_code
