"""Which augmentation buys how much on another microscope: leave-one-group-out runs (issue 15).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/augment_ablation.py --work build/ablation --seeds 3 4
    PYTHONPATH=$PWD python benchmarks/robustness_eval.py training/runs/default-edge build/ablation/*-s3 \\
        build/ablation/*-s4 --as-trained-only --json docs/figures/augment-ablation.json

Every run starts from the built-in default's weights (`training/runs/default-edge`) and trains one
epoch on PBC's training split (AdamW, cosine from 5e-4: the part of `training/robust-edge.toml`
that its checkpoint kept) with the robust augmentation of `wbcedge.train.augment`, one group of
options switched off, or only flips and quarter turns ("geometry only"). Several seeds, because
one epoch on one seed says little about a BCCD figure whose interval is +/-5 points.
A run folder that already has its summary.json is not trained again (rerun to resume).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GROUPS = {
    "stain": {"hed": 0.0, "hed_bias": 0.0, "hue": 0.0, "saturation": 0.0},
    "illumination": {"white_balance": 0.0, "tint": 0.0, "brightness": 0.0, "contrast": 0.0, "gamma": 0.0},
    "optics": {"defocus": 0.0, "motion": 0.0, "noise": 0.0, "jpeg": 0.0},
    "scale": {"scale": False},
}


def variants() -> dict[str, tuple[str, dict]]:
    """Name -> (augmentation preset, options changed from it)."""
    out = {"all": ("robust", {})}
    out.update({f"no-{group}": ("robust", options) for group, options in GROUPS.items()})
    out["geometry-only"] = ("none", {"flips": True, "rot90": True})
    return out


def config_for(preset: str, augment: dict, seed: int) -> dict:
    return {"manifest": "training/pbc_split.csv", "model": "mobilenet_v2", "alpha": 0.35,
            "weights": "training/runs/default-edge/model.keras", "epochs": 1, "batch_size": 64,
            "learning_rate": 5e-4, "weight_decay": 1e-4, "patience": 1, "seed": seed,
            "augment_preset": preset, "augment": augment}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "build" / "ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3, 4])
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = ap.parse_args()
    for seed in args.seeds:
        for name, (preset, augment) in variants().items():
            if args.only and name not in args.only:
                continue
            run = args.work / f"{name}-s{seed}"
            if (run / "summary.json").is_file():
                print(f"{run}: done before", flush=True)
                continue
            cfg_path = args.work / f"{name}-s{seed}.json"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(json.dumps(config_for(preset, augment, seed), indent=1))
            print(f"{run}: training", flush=True)
            subprocess.run([sys.executable, "-m", "wbcedge", "train", "--config", str(cfg_path), "--out", str(run)],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
