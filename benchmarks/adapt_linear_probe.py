"""How far the site's features go without fine-tuning: after BatchNorm re-estimation, a linear probe
(scikit-learn's logistic regression) and a nearest-class-mean classifier on the penultimate features,
scored on the LABELLED cells' dev parts (split as `wbcedge adapt --holdout 0.3` splits them; the
held-out check is never read).

    PYTHONPATH=$PWD python benchmarks/adapt_linear_probe.py build/adapt-bccd-h/labelled \
        --unlabelled build/adapt-bccd-h/unlabelled --splits 8

If a probe on frozen features came close to fine-tuning (benchmarks/adapt_dev.py), the fine-tuning
would be spending its few labels on the head; if it falls well short, the features themselves must move.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("data", type=Path)
    ap.add_argument("--unlabelled", type=Path)
    ap.add_argument("--splits", type=int, default=8)
    ap.add_argument("--holdout", type=float, default=0.3)
    args = ap.parse_args()

    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from wbcedge.labels import class_indices
    from wbcedge.train.adapt import DEFAULT_RUN, AdaptConfig, _bn_cells
    from wbcedge.train.adapt_site import plan_site, site_inputs, unlabelled_inputs
    from wbcedge.train.bn_adapt import reestimate_batchnorm
    from wbcedge.train.convert import with_feature_output
    from wbcedge.train.run_folder import load_run

    predictor = load_run(DEFAULT_RUN)
    model, spec, cfg = predictor.keras_model, predictor.spec, AdaptConfig()
    initial = model.get_weights()
    x_unl = unlabelled_inputs(args.unlabelled, spec)
    with_features, _ = with_feature_output(model)
    scores: dict[str, list[float]] = {"batchnorm_head": [], "probe_C0.1": [], "probe_C1": [], "probe_C10": [],
                                      "nearest_class_mean": []}

    def unit(f):
        return f / np.linalg.norm(f, axis=1, keepdims=True)

    for split in range(args.splits):
        plan = plan_site(args.data, args.holdout, split, None, cfg.val_share)
        train = plan.fit + plan.val
        x_tr, y_tr = site_inputs(train, spec), class_indices(r.label for r in train)
        x_dev, y_dev = site_inputs(plan.test, spec), class_indices(r.label for r in plan.test)
        model.set_weights(initial)
        reestimate_batchnorm(model, _bn_cells(x_tr, x_tr[:0], x_unl, cfg), cfg.bn_chunk)
        _, f_tr = with_features.predict(x_tr.astype(np.float32), verbose=0)
        p_dev, f_dev = with_features.predict(x_dev.astype(np.float32), verbose=0)
        scores["batchnorm_head"].append(float((p_dev.argmax(1) == y_dev).mean()))
        for c in (0.1, 1, 10):
            probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, class_weight="balanced", max_iter=5000))
            probe.fit(f_tr, y_tr)
            scores[f"probe_C{c}"].append(float((probe.predict(f_dev) == y_dev).mean()))
        classes = np.unique(y_tr)
        means = unit(np.stack([unit(f_tr[y_tr == c]).mean(0) for c in classes]))
        scores["nearest_class_mean"].append(float((classes[(unit(f_dev) @ means.T).argmax(1)] == y_dev).mean()))
    print(json.dumps({"splits": args.splits, "dev_cells_per_split": len(y_dev),
                      "mean": {k: round(float(np.mean(v)), 3) for k, v in scores.items()},
                      "per_split": scores}))


if __name__ == "__main__":
    main()
