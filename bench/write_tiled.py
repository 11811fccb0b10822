"""Cost of writing one image product: a float32 OME-TIFF with its pyramid, alone.

Streams ``--height × --width`` float32 rows (Gaussian noise, the left third no data, as a
difference image outside the pre frame) through :func:`exo2micro.io.tiffio.write_tiled` in
512-row blocks, flat (one level) and pyramidal, and prints wall, CPU and peak RSS of each.
The blocks repeat one precomputed block, so the numbers are the writer's own cost.

Usage (the file goes to --work, never into the repository)::

    python bench/write_tiled.py --height 25000 --width 30000 --work /tmp/e2m-write --repeat 2
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def child(path: str, height: int, width: int, pyramid: bool, compression: str | None) -> None:
    """Write the image once and print wall s, CPU s and peak RSS MiB."""
    import numpy as np

    sys.path.insert(0, str(ROOT))
    from exo2micro.io.tiffio import TILE, write_tiled

    rng = np.random.default_rng(0)
    block = rng.normal(0, 1, (TILE, width)).astype(np.float32)
    block[:, : width // 3] = np.nan
    blocks = (block[: min(TILE, height - y0)] for y0 in range(0, height, TILE))
    t0, c0 = time.perf_counter(), time.process_time()
    write_tiled(path, (height, width), np.float32, blocks, pyramid=pyramid,
                compression=compression)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{time.perf_counter() - t0:.2f} {time.process_time() - c0:.2f} {peak:.0f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--height", type=int, default=25000)
    ap.add_argument("--width", type=int, default=30000)
    ap.add_argument("--work", type=Path, default=Path("/tmp/e2m-write"))
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--compression", default=None, help="tifffile codec (default: none)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child[0], args.height, args.width, args.child[1] == "pyramid",
              args.compression)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    print("| levels | wall s | CPU s | peak RSS MiB | file GB |\n|---|---|---|---|---|")
    for _ in range(args.repeat):
        for kind in ("flat", "pyramid"):
            out = args.work / f"{kind}.tif"
            cmd = [sys.executable, __file__, "--height", str(args.height), "--width",
                   str(args.width), "--child", str(out), kind]
            if args.compression:
                cmd += ["--compression", args.compression]
            wall, cpu, rss = subprocess.run(cmd, check=True, capture_output=True,
                                            text=True).stdout.split()
            print(f"| {kind} | {wall} | {cpu} | {rss} | {out.stat().st_size / 1e9:.2f} |")
            out.unlink()


if __name__ == "__main__":
    main()
