"""The adaptation report: held-out accuracy at each step with 95% intervals, McNemar's test of
parent against adapted, per-class recall, forgetting and the learning curve, as
`adapt-report.json`, `adapt-report.md` and `adapt-report.png` in the bundle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wbcedge.evaluation.metrics import _figure, classification_results, mcnemar
from wbcedge.jsonable import to_jsonable
from wbcedge.train.shift_reference import MIN_VAL_IMAGES

STAGE_NAMES = {"parent": "parent (as given)", "batchnorm": "BatchNorm re-estimated",
               "adapted_float": "adapted, float", "adapted_int8": "adapted, the bundle's default file (int8 when it passes the gate)"}


def held_out_results(y_test: np.ndarray, stages: dict[str, np.ndarray], classes: list[str],
                     temperature: float = 1.0) -> dict:
    """classification_results for every stage, and McNemar parent vs adapted int8 (same cells);
    `temperature`: the adapted bundle's, for the count for the cells' class mix as `wbcedge run` makes it."""
    out = {name: classification_results(y_test, probs, classes) for name, probs in stages.items()}
    out["mcnemar_parent_vs_adapted"] = mcnemar(y_test, stages["parent"], stages["adapted_int8"],
                                               names=("parent", "adapted"))
    out["differential"] = held_out_differential(y_test, {k: stages[k] for k in ("parent", "adapted_int8")}, classes,
                                                temperature)
    return out


def held_out_differential(y_test: np.ndarray, stages: dict[str, np.ndarray], classes: list[str],
                          temperature: float = 1.0) -> dict:
    """The differential count (share of each class) of the held-out cells as labelled ("true") and as
    each model calls them, and each model's largest error in points: what a lab's count of these
    cells would have been (the threshold for unidentified cells aside); and the adapted model's
    estimate for the cells' class mix from its probabilities calibrated by `temperature`, as the runner
    applies it (the runner shows that estimate only for a calibrated bundle)."""
    from wbcedge.device.class_mix import estimate_mix
    from wbcedge.device.confidence import apply_temperature

    n = max(len(y_test), 1)
    out = {"true": {c: float(np.sum(y_test == i)) / n for i, c in enumerate(classes)}}
    shares = {name: np.bincount(probs.argmax(1), minlength=len(classes)) / n for name, probs in stages.items()}
    if "adapted_int8" in stages and len(y_test):   # the session's count corrected for its class mix (as wbcedge run)
        shares["adapted_int8_mix"] = estimate_mix(apply_temperature(stages["adapted_int8"], temperature)).mix
    for name, share in shares.items():
        out[name] = {c: float(share[i]) for i, c in enumerate(classes)}
        out[f"{name}_max_error_pp"] = 100 * max(abs(out[name][c] - out["true"][c]) for c in classes)
    return out


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _ci(ci) -> str:
    return "-" if not ci else f"{100 * ci[0]:.1f}-{100 * ci[1]:.1f}"


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:] + ("." if text else "")


def report_markdown(report: dict) -> str:
    held, site = report["held_out"], report["site"]
    n = held["parent"]["n"]
    lines = [f"# Adaptation report: {report['bundle']}", "",
             f"Parent: `{report['parent']['run']}`. Site cells: {site['data']}"
             + (f" (held-out cells from {site['test']})" if site["test"] else "")
             + f"; {site['unlabelled_cells']} unlabelled cells; {site['replayed_parent_cells']} parent cells replayed.",
             (f"Adapted classes: {', '.join(site['adapted'])}; not adapted (no site cells): "
             f"{', '.join(site['not_adapted']) or 'none'}."), _sentence((site.get("crop") or {}).get("how", "")), "",
             f"**Deployable: {'yes' if report['deployable'] else 'NO'}**"
             + (f" - {report['refusal']}" if report.get("refusal") else ""), "",
             f"## Held-out site cells ({n}, never trained or selected on)", "",
             "| step | accuracy | 95% CI |", "|---|---|---|"]
    for key, label in STAGE_NAMES.items():
        if key in held:
            lines.append(f"| {label} | {_pct(held[key]['accuracy'])} | {_ci(held[key]['accuracy_ci95'])} |")
    m = held["mcnemar_parent_vs_adapted"]
    lines += ["", (f"McNemar (exact), parent vs adapted int8: {m['b']} cells only the parent got right, {m['c']} only "
                  f"the adapted model; p = {m['p_value']:.3g} ({m['better']})."), "",
              "| class | fit / val / held out | parent recall (95% CI) | adapted int8 recall (95% CI) |",
              "|---|---|---|---|"]
    for c in held["parent"]["classes"]:
        counts = site["counts"][c]
        p, a = held["parent"]["per_class"][c], held["adapted_int8"]["per_class"][c]
        lines.append(f"| {c} | {counts['fit']} / {counts['val']} / {counts['held_out']} | {_pct(p['recall']) if p['support'] else '-'} "
                     f"({_ci(p['recall_ci95'])}) | {_pct(a['recall']) if a['support'] else '-'} ({_ci(a['recall_ci95'])}) |")
    d = held.get("differential")
    if d:
        lines += ["", ("Differential count of the held-out cells (each cell's top class; a mix that the lab capped "
                       "per class is not its patients' mix):"), "",
                  "| class | labelled | parent | adapted | adapted, for these cells' mix (EM) |",
                  "|---|---|---|---|---|"]
        mix = d.get("adapted_int8_mix") or {}
        lines += [(f"| {c} | {_pct(d['true'][c])} | {_pct(d['parent'][c])} | {_pct(d['adapted_int8'][c])} "
                   f"| {_pct(mix.get(c))} |") for c in held["parent"]["classes"]]
        lines.append(f"| largest error | | {d['parent_max_error_pp']:.1f} points | {d['adapted_int8_max_error_pp']:.1f} "
                     f"points | {d.get('adapted_int8_mix_max_error_pp', float('nan')):.1f} points |")
    gate = report["export_gate"]
    lines += ["", f"Export gate (int8 against float on the held-out cells; budget {gate['budget']['max_drop_pp']:.2f} "
                  f"points, {gate['budget']['max_class_drop_pp']:.2f} per class): "
                  + ("passed" if not gate["failures"] else "; ".join(gate["failures"])) + "."]
    f = report.get("forgetting")
    lines += ["", "## Forgetting (the parent's own test set)", ""]
    if f:
        lines += [f"{f['images']} images of `{f['manifest']}`: "
                  + ", ".join(f"{k.replace('_', ' ')} {_pct(f[k]['accuracy'])} ({_ci(f[k]['accuracy_ci95'])})"
                              for k in ("parent", "adapted_float", "adapted_int8")) + "."]
    else:
        lines += ["Not measured: the parent's test images are not on this machine."]
    curve = report.get("learning_curve")
    if curve:
        lines += ["", f"## Learning curve (held-out accuracy, {curve['held_out_cells']} cells)", "",
                  "| labelled cells per class | cells | accuracy per seed | mean |", "|---|---|---|---|"]
        for k, pts in _curve_groups(curve).items():
            accs = [p["accuracy"] for p in pts]
            lines.append(f"| {k} | {pts[0]['cells']} | {', '.join(_pct(a) for a in accs)} | {_pct(float(np.mean(accs)))} |")
    lines += ["", "## Next steps", ""] + [f"- {step}" for step in report.get("next_steps", [])]
    lines += ["", "![held-out recall and learning curve](adapt-report.png)", ""]
    return "\n".join(lines)


RECALL_TO_REACH = 0.75     # a class below this adapted recall is named in the next steps (issue 14's per-class bar)
STILL_RISING_PP = 2.0      # the curve's last step buys at least this many points: labelling more helps


def next_steps(report: dict) -> list[str]:
    """What the lab should do next, from the held-out recall per class and the learning curve."""
    held, site = report["held_out"], report["site"]
    steps = []
    weak = [(c, r) for c, r in held["adapted_int8"]["per_class"].items()
            if c in site["adapted"] and r["support"] and r["recall"] < RECALL_TO_REACH]
    if weak:
        steps.append("Label more cells of " + ", ".join(
            f"{c} (adapted recall {_pct(r['recall'])} on {r['support']} held-out cells, "
            f"{site['counts'][c]['fit'] + site['counts'][c]['val']} labelled)" for c, r in weak) + ".")
    missing = [c for c in site["not_adapted"] if held["parent"]["per_class"].get(c, {}).get("support")]
    if missing:
        steps.append(f"No site cells of {', '.join(missing)}: kept as the parent classifies them; label at least "
                     "3 (better 20) to adapt them.")
    groups = _curve_groups(report["learning_curve"]) if report.get("learning_curve") else {}
    if len(groups) >= 2:
        (k0, pts0), (k1, pts1) = list(groups.items())[-2:]
        gain = 100 * (np.mean([p["accuracy"] for p in pts1]) - np.mean([p["accuracy"] for p in pts0]))
        # how far one fine-tune's seed moves a point: a step smaller than that says nothing
        spread = 100 * max(np.ptp([p["accuracy"] for p in pts]) for pts in (pts0, pts1))
        if spread >= STILL_RISING_PP and spread > abs(gain):
            steps.append(f"The learning curve cannot tell whether more cells would help: {gain:+.1f} points from {k0} "
                         f"to {k1} cells per class, but its seeds differ by up to {spread:.1f} points at one size. "
                         "Run it with more seeds (curve_seeds in --config), or label more cells and compare.")
        elif gain >= STILL_RISING_PP:
            steps.append(f"The learning curve is still rising ({gain:+.1f} points from {k0} to {k1} cells per "
                         "class): labelling more cells is likely to help.")
        else:
            steps.append(f"The learning curve is flat ({gain:+.1f} points from {k0} to {k1} cells per class): more "
                         "cells like these are unlikely to help much; check the labels and the crops of the classes "
                         "that miss.")
    elif not groups:
        steps.append("Run again with --curve to see whether labelling more cells would help.")
    n_val = sum(v.get("val", 0) for v in site["counts"].values())
    if n_val < MIN_VAL_IMAGES:
        steps.append(f"Only {n_val} labelled cells stop the fine-tuning, and a confidence temperature needs "
                     f"{MIN_VAL_IMAGES}: the bundle's confidences are not calibrated, so its unidentified threshold is "
                     "approximate and `wbcedge run` gives no count for the sample's class mix. Label more cells "
                     f"(about {MIN_VAL_IMAGES - n_val} more of them must land in the validation part; see --holdout "
                     "and val_share).")
    return steps


def _curve_groups(curve: dict) -> dict:
    groups: dict = {}
    for p in curve["points"]:
        groups.setdefault(p["per_class"], []).append(p)
    return groups


def plot_report(path: Path, report: dict) -> Path:
    held = report["held_out"]
    classes = held["parent"]["classes"]
    curve = report.get("learning_curve")
    fig = _figure(10 if curve else 6, 3.6)
    axes = fig.subplots(1, 2 if curve else 1)
    ax = axes[0] if curve else axes
    xs = np.arange(len(classes))
    for offset, key, colour in ((-0.2, "parent", "#999999"), (0.2, "adapted_int8", "#1f77b4")):
        rec, err = [], [[], []]
        for c in classes:
            pc = held[key]["per_class"][c]
            r = pc["recall"] if pc["support"] else np.nan
            lo, hi = pc["recall_ci95"] or (r, r)
            rec.append(r)
            err[0].append(max(0.0, r - lo) if pc["support"] else 0)
            err[1].append(max(0.0, hi - r) if pc["support"] else 0)
        ax.bar(xs + offset, rec, 0.4, yerr=err, capsize=3, color=colour,
               label=f"{STAGE_NAMES[key]}: {_pct(held[key]['accuracy'])}")
    ax.set_xticks(xs, [f"{c}\n(n={held['parent']['per_class'][c]['support']})" for c in classes], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall on held-out site cells (95% CI)")
    ax.legend(fontsize=7, loc="lower right")
    if curve:
        ax2 = axes[1]
        groups = _curve_groups(curve)
        x = [pts[0]["cells"] for pts in groups.values()]
        for i, (k, pts) in enumerate(groups.items()):
            ax2.scatter([pts[0]["cells"]] * len(pts), [p["accuracy"] for p in pts], color="#1f77b4", s=12)
        ax2.plot(x, [np.mean([p["accuracy"] for p in pts]) for pts in groups.values()], "-o", color="#1f77b4")
        for k, xv in zip(groups, x):
            ax2.annotate(f"{k}/class", (xv, 0.02), fontsize=7, ha="center")
        ax2.axhline(held["parent"]["accuracy"], color="#999999", ls="--", label="parent")
        ax2.set_ylim(0, 1.05)
        ax2.set_xlabel("labelled site cells")
        ax2.set_ylabel("held-out accuracy")
        ax2.legend(fontsize=7)
        ax2.grid(alpha=0.3)
    fig.suptitle("wbcedge adapt: held-out site cells", fontsize=10)
    fig.savefig(path)
    return path


def write_adapt_report(folder: Path, report: dict) -> None:
    folder = Path(folder)
    (folder / "adapt-report.json").write_text(json.dumps(report, indent=2, default=to_jsonable) + "\n")
    (folder / "adapt-report.md").write_text(report_markdown(report))
    plot_report(folder / "adapt-report.png", report)
