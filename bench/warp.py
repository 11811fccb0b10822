"""Stage 3's streamed warp alone: one stage-1 signal image warped by a fixed similarity into
a pyramidal OME-TIFF, as the aligned pre is written (``exo2micro.stages.warp.warp_to_files``).

    .venv/bin/python bench/warp.py SIGNAL.tif --out /tmp/warped.tif --threads 2

Prints wall and CPU seconds of the warp; time the whole process with ``farm-bench`` to compare
trees (``PYTHONPATH=<tree>``). The output is deleted unless ``--keep``. Not part of the tests.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    from exo2micro.io.tiffio import OmeMeta, TiffImage
    from exo2micro.numerics.transform import similarity_post_to_pre
    from exo2micro.stages.warp import warp_to_files

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("signal", type=Path, help="a stage-1 signal TIFF (tiff/01_pre_signal.tif)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/e2m-warp.tif"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rotation", type=float, default=3.0, help="degrees")
    ap.add_argument("--scale", type=float, default=1.03)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    with TiffImage(args.signal) as pre:
        h, w = pre.shape
        centre = ((w - 1) / 2, (h - 1) / 2)
        post_to_pre = similarity_post_to_pre(args.rotation, args.scale, centre, centre)
        t0, c0 = time.perf_counter(), time.process_time()
        warp_to_files(pre, post_to_pre, (h, w), 0, {"tiff": args.out}, threads=args.threads,
                      ome=OmeMeta("aligned pre (benchmark)", "signal", None))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"warp {w} x {h}: wall {wall:.2f} s, CPU {cpu:.2f} s, {args.threads} threads")
    if not args.keep:
        args.out.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
