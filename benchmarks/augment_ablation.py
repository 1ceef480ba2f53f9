"""Which augmentation buys how much on another microscope: leave-one-group-out runs (issue 15).

    PYTHONPATH=$PWD nice -n 10 python benchmarks/augment_ablation.py --work build/ablation
    PYTHONPATH=$PWD python benchmarks/robustness_eval.py training/runs/default-edge build/ablation/*-s3 \\
        --as-trained-only --json docs/figures/augment-ablation.json

Every run starts from the PBC-only model `training/runs/default-edge` and trains one epoch on
PBC's training split (AdamW, cosine from 3e-4, 15% of images left clean), in one stage: a
simplified version of the chain that made the built-in model (docs/model-card.md). Variants:
with or without Reinhard stain normalisation in the preprocessing (the spec's
`stain_reference`, in training and at inference), with only flips and quarter turns
("geometry only"), with the whole robust augmentation of `wbcedge.train.augment` ("all"), or
with one group of it switched off; and the whole recipe with GroupNorm in place of BatchNorm
(four epochs). Each is one seed unless `--seeds` says more: one epoch on one
seed says little about a BCCD figure whose interval is +/-5 points.
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



def stain_reference() -> list[float]:
    """The built-in model's Reinhard reference (median CIELAB means and deviations of 500 PBC
    training crops), read from its bundle's preprocessing spec."""
    from wbcedge.bundle import load_bundle

    return list(load_bundle().spec.stain_reference)


def variants() -> dict[str, tuple[bool, str, dict, dict]]:
    """Name -> (Reinhard in the preprocessing, augmentation preset, options changed from it,
    other training options changed)."""
    geometry = ("none", {"flips": True, "rot90": True}, {})
    robust = ("robust", {"clean": 0.15}, {})
    out = {"geometry-only": (False, *geometry), "all": (False, *robust),
           "reinhard-geometry-only": (True, *geometry), "reinhard-all": (True, *robust)}
    out.update({f"reinhard-no-{group}": (True, "robust", {"clean": 0.15, **options}, {})
                for group, options in GROUPS.items()})
    # GroupNorm in place of every BatchNorm (scale and offset carried over): the swap throws the
    # stored statistics away, so it gets four epochs to relearn rather than one
    out["reinhard-all-groupnorm-4ep"] = (True, "robust", {"clean": 0.15}, {"norm": "group", "epochs": 4, "patience": 4})
    return out


def config_for(reinhard: bool, preset: str, augment: dict, other: dict, seed: int) -> dict:
    return {"manifest": "training/pbc_split.csv", "model": "mobilenet_v2", "alpha": 0.35,
            "weights": "training/runs/default-edge/model.keras", "epochs": 1, "batch_size": 64,
            "learning_rate": 3e-4, "weight_decay": 1e-4, "patience": 1, "seed": seed,
            "preprocess": {"stain_reference": stain_reference()} if reinhard else {},
            "augment_preset": preset, "augment": augment, **other}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, default=REPO / "build" / "ablation")
    ap.add_argument("--seeds", type=int, nargs="+", default=[3])
    ap.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    args = ap.parse_args()
    for seed in args.seeds:
        for name, (reinhard, preset, augment, other) in variants().items():
            if args.only and name not in args.only:
                continue
            run = args.work / f"{name}-s{seed}"
            if (run / "summary.json").is_file():
                print(f"{run}: done before", flush=True)
                continue
            cfg_path = args.work / f"{name}-s{seed}.json"
            cfg_path.parent.mkdir(parents=True, exist_ok=True)
            cfg_path.write_text(json.dumps(config_for(reinhard, preset, augment, other, seed), indent=1))
            print(f"{run}: training", flush=True)
            subprocess.run([sys.executable, "-m", "wbcedge", "train", "--config", str(cfg_path), "--out", str(run)],
                           cwd=REPO, check=True, stdout=subprocess.DEVNULL)


if __name__ == "__main__":
    main()
