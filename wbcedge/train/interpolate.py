"""Weight-space mixing of runs of one lineage: interpolation of two (WiSE-FT, Wortsman et al.,
CVPR 2022) and the uniform average of several (a model soup, Wortsman et al., ICML 2022).

Models fine-tuned from the same weights usually lie in one basin: the weights `(1 - t) * A + t * B`
trade one run's strengths for the other's smoothly, and the average of several fine-tunes that
differ only in their seed is often better than each, most of all away from the training data.
Every weight is mixed, BatchNorm's stored statistics included (they are averages of the same
kind). The result is a run folder like any other (the last run's config, spec and labels), so
`wbcedge evaluate` and `wbcedge export` take it; `interpolated.json` says from what.

    python -m wbcedge.train.interpolate RUN_A RUN_B --t 0.5 --out training/runs/mix
    python -m wbcedge.train.interpolate RUN_1 RUN_2 RUN_3 --out training/runs/soup     # uniform average
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wbcedge.errors import InputDataError


def mix_weights(members: list[list[np.ndarray]], coefficients: list[float]) -> list[np.ndarray]:
    """sum_k coefficients[k] * members[k], array by array; the members must share one architecture."""
    if len(members) != len(coefficients) or not members:
        raise ValueError("one coefficient per member, at least one member")
    first = members[0]
    if any(len(m) != len(first) or any(x.shape != y.shape for x, y in zip(first, m)) for m in members[1:]):
        raise InputDataError("the runs' models differ in architecture; only runs of one lineage "
                             "(one warm-started from the other, or all from the same weights) can be mixed")
    return [sum(c * m[i].astype(np.float64) for c, m in zip(coefficients, members)).astype(first[i].dtype)
            for i in range(len(first))]


def interpolate_weights(a: list[np.ndarray], b: list[np.ndarray], t: float) -> list[np.ndarray]:
    """`(1 - t) * a + t * b`, array by array; the two lists must come from one architecture."""
    if not 0.0 <= t <= 1.0:
        raise InputDataError(f"--t {t}: the mixing weight must be between 0 (run A) and 1 (run B)")
    return mix_weights([a, b], [1.0 - t, t])


def average_weights(members: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The uniform average of the members' weights (a model soup)."""
    return mix_weights(members, [1.0 / len(members)] * len(members))


def mix_runs(runs: list[Path], out: Path, t: float | None = None) -> Path:
    """A run folder whose weights mix `runs`: two runs with `t`, or the uniform average of all."""
    from wbcedge.train.bn_adapt import write_derived_run
    from wbcedge.train.run_folder import load_run

    runs, out = [Path(r) for r in runs], Path(out)
    if len(runs) < 2:
        raise InputDataError(f"give at least two run folders to mix (got {len(runs)})")
    if t is not None and len(runs) != 2:
        raise InputDataError(f"--t mixes exactly two runs (got {len(runs)}); leave it out to average them all")
    loaded = [load_run(r) for r in runs]
    for run, other in zip(runs[1:], loaded[1:]):
        if other.spec != loaded[0].spec:
            raise InputDataError(f"{runs[0]} and {run} preprocess differently; mix runs with one preprocessing spec")
    model = loaded[-1].keras_model
    members = [p.keras_model.get_weights() for p in loaded]
    if t is not None:
        model.set_weights(interpolate_weights(members[0], members[1], t))
        note = {"run_a": str(runs[0]), "run_b": str(runs[1]), "t": t, "weights": "(1 - t) * run_a + t * run_b"}
    else:
        model.set_weights(average_weights(members))
        note = {"runs": [str(r) for r in runs], "weights": "uniform average of the runs (a model soup)"}
    return write_derived_run(runs[-1], out, model, "interpolated.json", note)


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="a run folder whose weights are (1 - t) x RUN_A + t x RUN_B, "
                                 "or without --t the uniform average of all the runs given")
    ap.add_argument("runs", type=Path, nargs="+")
    ap.add_argument("--t", type=float, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    try:
        mix_runs(args.runs, args.out, args.t)
    except InputDataError as e:
        ap.error(str(e))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
