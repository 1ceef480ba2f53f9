"""Soak: many frames through the run path; memory must stay flat and crops small.

    nice -n 10 python benchmarks/soak.py --frames 10000 --out /tmp/soak > soak.log 2>&1 &

Frames are the six shipped BCCD sample frames, decoded once and delivered in turn as a
still-image source, each shifted by a few pixels so no two frames are identical. They go
through exactly what `wbcedge run` wires together (`count_cells`): the built-in bundle's
CellPipeline (locate, crop, int8 TFLite), the tracker, the SQLite Recorder writing a crop
per counted cell, and the report files at the end. Only the decoding of files is left
out (10,000 distinct image files would be 1 GB; the decoder has its own budget check).

Prints and writes (--json) the resident memory (VmRSS) after the first frame, at every
tenth of the run and at the end, the crops' disk use per cell, and the frames per second.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from wbcedge.bundle import load_bundle
from wbcedge.device.capture import FrameSource
from wbcedge.device.differential import differential
from wbcedge.device.pipeline import CellPipeline, run_session
from wbcedge.device.records import CROPS_DIR, MAX_CROP_SIDE, Recorder, read_cells
from wbcedge.device.report import write_outputs
from wbcedge.device.session import SAMPLE_FRAMES
from wbcedge.device.track import CellTracker
from wbcedge.preprocess import read_image


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class LoopedFrames(FrameSource):
    """n frames cycling through the sample frames, each rolled by a few pixels."""
    is_stream = False

    def __init__(self, n: int):
        super().__init__("soak")
        self.images = [read_image(p) for p in sorted(SAMPLE_FRAMES.glob("*.jpg"))]
        self.n = n

    def __next__(self):
        i = self._next_index
        if i >= self.n:
            raise StopIteration
        image = np.roll(self.images[i % len(self.images)], (i // len(self.images)) % 7, axis=1)
        return self._frame(image, time.time(), f"soak-{i:06d}.png")


def crop_sizes(pipeline: CellPipeline) -> dict:
    """JPEG bytes (q90) of the sample frames' cell crops as captured and as stored (bounded)."""
    import cv2

    from wbcedge.device.records import bounded_crop

    captured, stored, sides = [], [], []
    for path in sorted(SAMPLE_FRAMES.glob("*.jpg")):
        for cell in pipeline.analyse(read_image(path)):
            sides.append(cell.crop.shape[0])
            captured.append(len(cv2.imencode(".jpg", cell.crop, [cv2.IMWRITE_JPEG_QUALITY, 90])[1]))
            stored.append(len(cv2.imencode(".jpg", bounded_crop(cell.crop), [cv2.IMWRITE_JPEG_QUALITY, 90])[1]))
    return {"cells": len(sides), "crop_sides_px": sorted(set(sides)),
            "captured_bytes_mean": round(float(np.mean(captured))), "stored_bytes_mean": round(float(np.mean(stored)))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=10_000)
    ap.add_argument("--out", type=Path, default=Path("/tmp/wbcedge-soak"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--crops-only", action="store_true", help="only compare crop sizes as captured and as stored")
    args = ap.parse_args()
    if args.crops_only:
        print(json.dumps(crop_sizes(CellPipeline(load_bundle(), threads=args.threads)), indent=2))
        return
    if args.out.exists():
        shutil.rmtree(args.out)

    bundle = load_bundle()
    pipeline = CellPipeline(bundle, threads=args.threads)
    recorder = Recorder(args.out)
    samples: list[dict] = []
    marks = {1, *(args.frames * k // 10 for k in range(1, 11))}
    t0 = time.perf_counter()

    def on_frame(frame, cells, counted) -> None:
        n = frame.index + 1
        if n in marks:
            samples.append({"frame": n, "rss_mb": round(rss_mb(), 1), "s": round(time.perf_counter() - t0, 1)})
            print(f"frame {n:6d}: RSS {samples[-1]['rss_mb']:.1f} MB, {samples[-1]['s']:.0f} s", flush=True)

    result = run_session(LoopedFrames(args.frames), pipeline, recorder, CellTracker(tracking=False),
                         on_frame=on_frame)
    recorder.close()
    wall = time.perf_counter() - t0
    write_outputs(args.out, differential(result.labels, bundle.classes), {"source": "soak"})
    cells = read_cells(args.out)
    crop_bytes = sum(p.stat().st_size for p in (args.out / CROPS_DIR).iterdir())
    db_bytes = sum(p.stat().st_size for p in args.out.glob("cells.db*"))
    summary = {
        "frames": result.frames_seen, "cells": len(cells), "wall_s": round(wall, 1),
        "fps": round(result.frames_seen / wall, 2),
        "rss_mb": {"first_frame": samples[0]["rss_mb"], "middle": next(s["rss_mb"] for s in samples
                                                                       if s["frame"] >= args.frames // 2),
                   "end": samples[-1]["rss_mb"]},
        "rss_samples": samples,
        "crop_max_side_px": MAX_CROP_SIDE,
        "crop_bytes_per_cell": round(crop_bytes / max(1, len(cells))),
        "db_bytes_per_cell": round(db_bytes / max(1, len(cells))),
        "disk_mb_per_10000_cells": round((crop_bytes + db_bytes) / max(1, len(cells)) * 10_000 / 1e6, 1),
    }
    print(json.dumps(summary, indent=2))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
