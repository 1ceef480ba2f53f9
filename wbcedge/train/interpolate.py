"""Weight-space interpolation of two runs of one lineage (WiSE-FT, Wortsman et al., CVPR 2022).

A model fine-tuned for robustness and one fine-tuned back toward its source microscope, both
from the same weights, usually lie in one basin: the weights `(1 - t) * A + t * B` trade
robustness for source accuracy smoothly, and often keep most of both. Every weight is mixed,
BatchNorm's stored statistics included (they are averages of the same kind). The result is a
run folder like any other (B's config, spec and labels), so `wbcedge evaluate` and
`wbcedge export` take it; `interpolated.json` says from what.

    python -m wbcedge.train.interpolate RUN_A RUN_B --t 0.5 --out training/runs/mix
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wbcedge.errors import InputDataError


def interpolate_weights(a: list[np.ndarray], b: list[np.ndarray], t: float) -> list[np.ndarray]:
    """`(1 - t) * a + t * b`, array by array; the two lists must come from one architecture."""
    if not 0.0 <= t <= 1.0:
        raise InputDataError(f"--t {t}: the mixing weight must be between 0 (run A) and 1 (run B)")
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise InputDataError("the two runs' models differ in architecture; only runs of one lineage "
                             "(one warm-started from the other, or both from the same weights) can be mixed")
    return [((1.0 - t) * x.astype(np.float64) + t * y.astype(np.float64)).astype(x.dtype) for x, y in zip(a, b)]


def interpolate_runs(run_a: Path, run_b: Path, t: float, out: Path) -> Path:
    from wbcedge.train.bn_adapt import write_derived_run
    from wbcedge.train.run_folder import load_run

    run_a, run_b, out = Path(run_a), Path(run_b), Path(out)
    a, b = load_run(run_a), load_run(run_b)
    if a.spec != b.spec:
        raise InputDataError(f"{run_a} and {run_b} preprocess differently; mix runs with one preprocessing spec")
    model = b.keras_model
    model.set_weights(interpolate_weights(a.keras_model.get_weights(), model.get_weights(), t))
    return write_derived_run(run_b, out, model, "interpolated.json",
                             {"run_a": str(run_a), "run_b": str(run_b), "t": t, "weights": "(1 - t) * run_a + t * run_b"})


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="a run folder whose weights are (1 - t) x RUN_A + t x RUN_B")
    ap.add_argument("run_a", type=Path)
    ap.add_argument("run_b", type=Path)
    ap.add_argument("--t", type=float, required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    interpolate_runs(args.run_a, args.run_b, args.t, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
