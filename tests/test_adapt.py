"""`wbcedge adapt`: the site data's refusals (fast, no TensorFlow) and one real adaptation (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbcedge.errors import InputDataError, WbcedgeError
from wbcedge.labels import CLASSES, UnknownClassError
from wbcedge.train.adapt_site import MIN_HELD_OUT, AdaptDataError, plan_site

SAMPLES = Path(__file__).resolve().parent.parent / "wbcedge" / "samples" / "pbc"


def _cells(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """Distinct small random crops under root/<class>/ (every file different bytes)."""
    rng = np.random.default_rng(seed)
    for c, n in per_class.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            cv2.imwrite(str(root / c / f"{c}_{i}.png"), rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    return root


def test_split_is_stratified_seeded_and_keeps_three_to_learn_from(tmp_path):
    data = _cells(tmp_path / "site", {c: 20 for c in CLASSES})
    plan = plan_site(data, holdout=0.3, seed=1)
    counts = plan.counts()
    for c in CLASSES:
        assert counts[c]["held_out"] == 6
        assert counts[c]["fit"] + counts[c]["val"] == 14 and counts[c]["val"] >= 1
    assert {r.path for r in plan.test}.isdisjoint({r.path for r in plan.fit + plan.val})
    again = plan_site(data, holdout=0.3, seed=1)
    assert [r.path for r in again.test] == [r.path for r in plan.test]
    assert again.data_sha256() == plan.data_sha256()
    assert [r.path for r in plan_site(data, holdout=0.3, seed=2).test] != [r.path for r in plan.test]


def test_a_class_without_cells_is_not_adapted(tmp_path):
    data = _cells(tmp_path / "site", {"lymphocyte": 20, "neutrophil": 20, "eosinophil": 20})
    plan = plan_site(data, holdout=0.4)
    assert plan.adapted == ["eosinophil", "lymphocyte", "neutrophil"]
    assert plan.not_adapted == ["basophil", "monocyte"]


def test_refuses_fewer_than_three_cells_in_a_class(tmp_path):
    data = _cells(tmp_path / "site", {"lymphocyte": 30, "neutrophil": 30, "monocyte": 2})
    with pytest.raises(AdaptDataError, match=r"monocyte: 2.*at least 3") as e:
        plan_site(data)
    assert isinstance(e.value, WbcedgeError)


def test_refuses_a_held_out_part_too_small_and_says_the_minimum(tmp_path):
    data = _cells(tmp_path / "site", {"lymphocyte": 10, "neutrophil": 10})
    with pytest.raises(AdaptDataError, match=rf"only 6 held-out.*at least {MIN_HELD_OUT}.*95% interval"):
        plan_site(data, holdout=0.3)


def test_refuses_unknown_class_names_in_folders_and_manifests(tmp_path):
    data = _cells(tmp_path / "site", {"lymphocyte": 10, "blast": 10})
    with pytest.raises(UnknownClassError, match="blast") as err:
        plan_site(data)
    # the way out works for adapt, which has no --map: rename, or a manifest made with `data index --map`
    assert f"wbcedge data index {data} --map 'blast=<class>'" in str(err.value)
    from wbcedge.data import index_folder, write_manifest
    records = index_folder(_cells(tmp_path / "ok", {"lymphocyte": 30})).records
    records[0].label = "promyelocyte"
    write_manifest(records, tmp_path / "site.csv")
    with pytest.raises(InputDataError, match="promyelocyte"):
        plan_site(tmp_path / "site.csv")


def test_separate_held_out_cells_and_manifest_test_rows(tmp_path):
    data = _cells(tmp_path / "site", {"lymphocyte": 5, "neutrophil": 5})
    test = _cells(tmp_path / "check", {"lymphocyte": 12, "neutrophil": 12}, seed=1)
    plan = plan_site(data, test=test)
    assert len(plan.test) == 24 and len(plan.fit) + len(plan.val) == 10 and plan.test_given
    from wbcedge.data import index_folder, write_manifest
    records = index_folder(data).records + index_folder(test).records
    for r in records:
        r.split = "test" if "check" in r.path else ""
    write_manifest(records, tmp_path / "site.csv")
    assert len(plan_site(tmp_path / "site.csv").test) == 24


def test_refuses_a_cell_on_both_sides(tmp_path):
    data = _cells(tmp_path / "site", {"lymphocyte": 30})
    test = _cells(tmp_path / "check", {"lymphocyte": 30})   # same seed: the same bytes
    with pytest.raises(AdaptDataError, match="both among the cells to learn from and the held-out"):
        plan_site(data, test=test)


def test_refuses_a_bad_holdout(tmp_path):
    with pytest.raises(AdaptDataError, match="between 0 and 1"):
        plan_site(_cells(tmp_path / "site", {"lymphocyte": 30}), holdout=1.5)


def test_the_gate_takes_the_adapt_configs_floors_and_its_refusal_names_only_what_adapt_has(tmp_path):
    """The export's own advice (--force, an export config) names options `adapt` does not have:
    a lab that accepts a weaker model lowers the floors in its adapt config instead."""
    from wbcedge.train.adapt import AdaptConfig, Parent, gate_options, gate_refusal
    from wbcedge.train.export import ExportOptions

    plan = plan_site(_cells(tmp_path / "site", {"lymphocyte": 40, "neutrophil": 40}), holdout=0.3)
    parent = Parent(run_dir=tmp_path, bundle=None, bundle_sha256=None, threshold=0.6)
    x = np.zeros((4, 8, 8, 3), np.uint8)
    given = AdaptConfig.load(_toml(tmp_path / "floors.toml", "min_accuracy = 60.0\nmin_class_recall = 30.0\n"))
    opts = gate_options(tmp_path / "run", plan, parent, given, x, (x, np.zeros(4, int)), x)
    assert (opts.min_accuracy, opts.min_class_recall) == (60.0, 30.0)
    default = gate_options(tmp_path / "run", plan, parent, AdaptConfig(), x, (x, np.zeros(4, int)), x)
    assert (default.min_accuracy, default.min_class_recall) == (ExportOptions().min_accuracy,
                                                               ExportOptions().min_class_recall)
    assert default.max_drop == pytest.approx(100.0 / len(plan.test), abs=1e-5)   # one held-out cell
    refusal = gate_refusal(["model_int8.tflite: accuracy 70.00% is 10.00 points below the floor"], 24)
    assert "24 held-out" in refusal and "70.00%" in refusal and "min_accuracy" in refusal
    assert "--force" not in refusal and "export config" not in refusal


def test_adapt_refuses_an_out_that_writing_would_destroy_before_any_model_loads(tmp_path):
    """`--out` pointed at the site's own cells (or any non-bundle folder, or a file) used to be deleted."""
    from typer.testing import CliRunner

    from wbcedge.cli import app

    data = _cells(tmp_path / "site", {"lymphocyte": 40, "neutrophil": 40})
    before = sorted(data.rglob("*"))
    res = CliRunner().invoke(app, ["adapt", "--data", str(data), "--out", str(data)])
    assert res.exit_code == 6 and "is not a wbcedge bundle" in res.output and "Traceback" not in res.output
    assert sorted(data.rglob("*")) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("keep me")
    res = CliRunner().invoke(app, ["adapt", "--data", str(data), "--out", str(a_file)])
    assert res.exit_code == 6 and "is a file" in res.output and a_file.read_text() == "keep me"
    (tmp_path / "b-run").mkdir()
    (tmp_path / "b-run" / "thesis.docx").write_text("keep me too")
    res = CliRunner().invoke(app, ["adapt", "--data", str(data), "--out", str(tmp_path / "b")])
    assert res.exit_code == 6 and "b-run" in res.output and "not an adapted run" in res.output
    assert (tmp_path / "b-run" / "thesis.docx").read_text() == "keep me too"


def test_a_crop_policy_adapt_does_not_know_is_refused_naming_the_choices(tmp_path):
    from wbcedge.train.adapt import AdaptConfig

    with pytest.raises(InputDataError, match=r"crop = 'box'; choose one of parent, cell, site"):
        AdaptConfig.load(_toml(tmp_path / "c.toml", 'crop = "box"\n'))
    assert AdaptConfig.load(_toml(tmp_path / "ok.toml", 'crop = "cell"\n')).crop == "cell"


def test_a_cell_fraction_sizes_cell_sized_crops_only_and_only_within_reason(tmp_path):
    from wbcedge.bundle import load_bundle
    from wbcedge.train.adapt import AdaptConfig
    from wbcedge.train.adapt_site import site_cut

    for text in ("cell_fraction = 0.95\n", 'crop = "site"\ncell_fraction = 0.5\n', 'cell_fraction = "0.5"\n'):
        with pytest.raises(InputDataError, match=r"c\.toml: cell_fraction = '?0\.\d+'?; it sizes cell-sized crops"):
            AdaptConfig.load(_toml(tmp_path / "c.toml", text))
    with pytest.raises(InputDataError, match="cell_fraction"):   # made in code (a benchmark's overrides), not a file
        AdaptConfig(crop="parent", cell_fraction=0.5)
    cfg = AdaptConfig.load(_toml(tmp_path / "ok.toml", "cell_fraction = 0.55\n"))
    spec = load_bundle().spec
    cut = site_cut(cfg.crop, spec, [], cfg.cell_fraction)   # what the adapted bundle's runner will use
    assert cut.recut == "cell" and cut.spec.cell_fraction == 0.55 and cut.spec.crop_um is None
    assert site_cut("cell", spec, []).spec.cell_fraction == spec.cell_fraction


def _toml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- a real adaptation

def _shifted_site(root: Path, looser: float = 1.0, swap: bool = True) -> tuple[Path, Path]:
    """A "new microscope" made from the shipped PBC samples: channels swapped (`swap`) and blurred,
    eight distinct views of each sample; two samples per class to learn from, two held out.
    `looser` > 1: every crop cut that much wider than PBC's (its cells look smaller)."""
    from wbcedge.evaluation.shifts import looser_crop
    from wbcedge.preprocess import read_image

    for c in CLASSES:
        sources = sorted((SAMPLES / c).glob("*.jpg"))
        for k, src in enumerate(sources):
            image = read_image(src)[:, :, ::-1] if swap else read_image(src)     # BGR -> RGB: red cells turn blue
            image = cv2.GaussianBlur(image, (0, 0), 2.0)
            image = looser_crop(image, looser) if looser != 1.0 else image
            part = "labelled" if k < 2 else "heldout"
            (root / part / c).mkdir(parents=True, exist_ok=True)
            for v in range(8):
                view = np.rot90(image, v % 4)
                view = view[:, ::-1] if v >= 4 else view
                cv2.imwrite(str(root / part / c / f"{src.stem}_{v}.png"), np.ascontiguousarray(view))
            if part == "labelled":   # unlabelled cells of the same "microscope" (a little more blurred)
                (root / "unlabelled").mkdir(exist_ok=True)
                for v in range(3):
                    cv2.imwrite(str(root / "unlabelled" / f"{c}_{src.stem}_{v}.png"),
                                np.ascontiguousarray(np.rot90(cv2.GaussianBlur(image, (0, 0), 1.0), v)))
    return root / "labelled", root / "heldout"


@pytest.mark.slow
@pytest.mark.train
def test_adapt_raises_held_out_accuracy_and_writes_a_bundle_that_verifies(tmp_path, default_run):
    pytest.importorskip("tensorflow")
    from wbcedge.bundle import load_bundle, verify_bundle
    from wbcedge.train.adapt import AdaptConfig, adapt

    labelled, heldout = _shifted_site(tmp_path / "site")
    cfg = AdaptConfig(epochs=6, patience=6, replay_per_class=2, formats=("tflite",), forgetting=False,
                      calib=100, learning_rate=3e-4, soup=1)
    report = adapt(default_run, labelled, tmp_path / "bundle", cfg, test=heldout,
                   unlabelled=tmp_path / "site" / "unlabelled", progress=lambda m: None)
    held = report["held_out"]
    assert held["parent"]["n"] == 80
    assert held["adapted_float"]["accuracy"] > held["parent"]["accuracy"] + 0.15
    assert held["adapted_int8"]["accuracy"] > held["parent"]["accuracy"]
    assert verify_bundle(tmp_path / "bundle") == []
    bundle = load_bundle(tmp_path / "bundle")
    adaptation = bundle.manifest["adaptation"]
    assert adaptation["site_counts"]["lymphocyte"]["held_out"] == 16
    assert adaptation["parent_bundle_manifest_sha256"] is not None
    assert bundle.manifest["source_run"] == "bundle-run"
    # a dozen validation cells alone could not set the shift check; with the 30 unlabelled ones it has one
    shift = bundle.manifest["domain_shift"]
    assert shift["reference"] and shift["val_images"] < 20 and shift["unlabelled_images"] == 30
    for name in ("adapt-report.md", "adapt-report.json", "adapt-report.png"):
        assert (tmp_path / "bundle" / name).is_file()
    saved = json.loads((tmp_path / "bundle" / "adapt-report.json").read_text())
    assert saved["deployable"] == bundle.deployable == report["deployable"]
    # no learning curve was asked for: the report's next steps say how to get one; and with fewer than 20
    # validation cells, that no confidence temperature could be fitted
    assert saved["next_steps"] == report["next_steps"] and "--curve" in report["next_steps"][-2]
    assert report["next_steps"][-1].startswith("Only ") and "confidence temperature needs 20" in report["next_steps"][-1]
    assert "## Next steps" in (tmp_path / "bundle" / "adapt-report.md").read_text()
    # the gate scored the held-out cells exactly as adapt did: its fp32 file agrees with the report's float figure
    gate = json.loads((tmp_path / "bundle" / "report.json").read_text())
    fp32 = next(f for f in gate["files"] if f["precision"] == "fp32")
    assert gate["test_images"] == held["parent"]["n"]
    assert fp32["accuracy"] == pytest.approx(held["adapted_float"]["accuracy"], abs=1.5 / held["parent"]["n"])


def test_a_review_export_folder_uses_only_reviewer_labelled_cells(tmp_path):
    import csv

    from wbcedge.data import FIELDS, index_folder
    data = _cells(tmp_path / "export", {"lymphocyte": 30, "neutrophil": 30})
    records = index_folder(data).records
    with open(data / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[*FIELDS, "reviewer"])
        writer.writeheader()
        for i, r in enumerate(records):
            row = {k: getattr(r, k) for k in FIELDS}
            row["path"] = str(Path(r.path).relative_to(data))
            writer.writerow({**row, "reviewer": "" if i % 3 == 0 else "ana"})
    with pytest.raises(AdaptDataError, match=r"only 12 held-out.*\(40 now"):
        plan_site(data)
    plan = plan_site(data, holdout=0.5)
    assert len(plan.fit) + len(plan.val) + len(plan.test) == 40


@pytest.mark.slow
@pytest.mark.train
def test_the_learning_curve_uses_the_bundles_soup_and_leaves_the_bundle_its_own_model(tmp_path, default_run):
    """Each point of the curve is the recipe the bundle gets (here a soup of two fine-tunes), and the
    curve's fine-tunes, run after the adapted model was scored, do not end up in the bundle."""
    pytest.importorskip("tensorflow")
    from wbcedge.train.adapt import AdaptConfig, adapt

    labelled, heldout = _shifted_site(tmp_path / "site")
    messages: list[str] = []
    cfg = AdaptConfig(epochs=2, min_epochs=2, replay_per_class=2, formats=("tflite",), forgetting=False, calib=60,
                      soup=2, curve=True, curve_sizes=(4, 0), curve_seeds=1, min_accuracy=0.0, min_class_recall=0.0)
    report = adapt(default_run, labelled, tmp_path / "bundle", cfg, test=heldout, progress=messages.append)
    points = report["learning_curve"]["points"]
    assert [(p["per_class"], p["cells"], p["seed"]) for p in points] == [(4, 20, 0), ("all", 80, 0)]
    assert all(0.0 <= p["accuracy"] <= 1.0 for p in points) and report["learning_curve"]["held_out_cells"] == 80
    curve_lines = [m for m in messages if m.startswith("learning curve")]
    assert len(curve_lines) == 2 and all(m.endswith("2 fine-tunes averaged") for m in curve_lines), curve_lines
    gate = json.loads((tmp_path / "bundle" / "report.json").read_text())
    fp32 = next(f for f in gate["files"] if f["precision"] == "fp32")
    assert fp32["accuracy"] == pytest.approx(report["held_out"]["adapted_float"]["accuracy"], abs=1.5 / 80)


@pytest.mark.slow
@pytest.mark.train
@pytest.mark.parametrize("crop", ["cell", "site"])
def test_re_cut_crops_give_the_adapted_bundle_a_spec_that_cuts_the_sites_cells_the_same_way(tmp_path, default_run,
                                                                                             crop):
    """crop = "cell": the bundle's spec has no crop_um (the runner sizes each crop to its located cell);
    crop = "site" (the site's crops 1.4x looser than PBC's): one factor, and the bundle's physical
    crop shrinks by it. Either way the parent is still scored on its own crops, and the runner counts
    with the bundle."""
    pytest.importorskip("tensorflow")
    from typer.testing import CliRunner

    from wbcedge.bundle import load_bundle
    from wbcedge.cli import app
    from wbcedge.train.adapt import AdaptConfig, adapt

    # (the locator finds no cell in channel-swapped crops: the site's scale is measured on its true colours)
    labelled, heldout = _shifted_site(tmp_path / "site", looser=1.4, swap=False)
    cfg = AdaptConfig(epochs=4, min_epochs=4, replay_per_class=2, formats=("tflite",), forgetting=False, calib=60,
                      soup=1, crop=crop, min_accuracy=0.0, min_class_recall=0.0)
    report = adapt(default_run, labelled, tmp_path / "bundle", cfg, test=heldout, progress=lambda m: None)
    spec, parent_spec = load_bundle(tmp_path / "bundle", verify=False).spec, load_bundle().spec
    recut = report["site"]["crop"]["recut"]
    if crop == "cell":
        assert spec.crop_um is None and parent_spec.crop_um is not None and recut == "cell"
    else:
        assert 0.55 < recut < 0.85, report["site"]["crop"]
        assert spec.crop_um == pytest.approx(parent_spec.crop_um * recut, abs=0.01)
    assert report["config"]["crop"] == crop and report["held_out"]["parent"]["n"] == 80
    if report["deployable"]:   # better than the parent after these few epochs (the usual case here)
        res = CliRunner().invoke(app, ["run", "--bundle", str(tmp_path / "bundle"), "--out", str(tmp_path / "s")])
        assert res.exit_code == 0, res.output
        assert (tmp_path / "s" / "differential.json").is_file()


@pytest.mark.slow
@pytest.mark.train
def test_a_soup_is_the_average_of_fine_tunes_with_their_own_seeds_on_the_same_cells(tmp_path, default_run):
    pytest.importorskip("tensorflow")
    from wbcedge.labels import class_indices
    from wbcedge.train.adapt import AdaptConfig, fine_tune_soup, soup_members
    from wbcedge.train.adapt_site import plan_site, site_inputs
    from wbcedge.train.interpolate import average_weights
    from wbcedge.train.run_folder import load_run

    labelled, _ = _shifted_site(tmp_path / "site")
    plan = plan_site(labelled, 0.3, 0, None, 0.2)
    predictor = load_run(default_run)
    model, spec = predictor.keras_model, predictor.spec
    site = (site_inputs(plan.fit, spec), class_indices(r.label for r in plan.fit),
            site_inputs(plan.val, spec), class_indices(r.label for r in plan.val))
    no_replay = (np.zeros((0, *site[0].shape[1:]), np.uint8), np.zeros(0, np.int64))
    cfg = AdaptConfig(epochs=1, patience=1, min_epochs=0, replay_per_class=0, soup=2, crop="parent")
    state = model.get_weights()
    members = [w for w, _ in soup_members(model, state, site, no_replay, cfg, lambda m: None, spec.cell_fraction)]
    assert len(members) == 2
    assert max(float(np.abs(a - b).max()) for a, b in zip(*members)) > 1e-4  # two different fine-tunes
    histories = fine_tune_soup(model, state, site, no_replay, cfg, lambda m: None, spec.cell_fraction)
    assert len(histories) == 2
    for got, want in zip(model.get_weights(), average_weights(members)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # each member depends on its seed only


def _report_for_next_steps(curve_means: list[float]) -> dict:
    """An adapt report with held-out results scored from generated predictions: eosinophils at 50%
    recall, neutrophils and monocytes well; lymphocytes held out but not adapted; a learning curve."""
    from wbcedge.train.adapt_report import held_out_results

    y = np.array([1] * 20 + [4] * 20 + [3] * 10 + [2] * 3)
    adapted = np.eye(5)[y].copy()
    adapted[:10] = np.eye(5)[4]                    # half the eosinophils called neutrophils
    parent = np.eye(5)[np.full(len(y), 3)]
    results = held_out_results(y, {"parent": parent, "adapted_int8": adapted}, list(CLASSES))
    counts = {c: {"fit": 16, "val": 4, "held_out": int((y == i).sum())} for i, c in enumerate(CLASSES)}
    points = [{"per_class": k, "cells": 4 * k, "seed": s, "accuracy": m + 0.01 * (s - 0.5)}
              for k, m in zip((5, 10, 20), curve_means) for s in (0, 1)]
    return {"held_out": results, "learning_curve": {"points": points, "held_out_cells": len(y)},
            "site": {"adapted": ["eosinophil", "monocyte", "neutrophil"], "not_adapted": ["basophil", "lymphocyte"],
                     "counts": counts}}


def test_next_steps_name_the_weak_classes_and_read_the_learning_curve():
    pytest.importorskip("sklearn", reason="the held-out results use the report extra (scikit-learn)")
    from wbcedge.train.adapt_report import next_steps

    rising = next_steps(_report_for_next_steps([0.60, 0.65, 0.72]))
    assert rising[0].startswith("Label more cells of eosinophil (adapted recall 50.0% on 20 held-out cells, 20 labelled)")
    assert "monocyte" not in rising[0] and "neutrophil" not in rising[0]
    assert "No site cells of lymphocyte" in rising[1] and "basophil" not in rising[1]   # no basophil held out
    assert "still rising (+7.0 points from 10 to 20" in rising[2]
    flat = next_steps(_report_for_next_steps([0.60, 0.70, 0.71]))
    assert "flat (+1.0 points" in flat[2]
    # a step smaller than the spread between the curve's seeds reads neither way (BCCD run L: -4.5 vs 7.7)
    noisy = _report_for_next_steps([0.60, 0.74, 0.70])
    for p in noisy["learning_curve"]["points"]:
        if p["per_class"] == 20:
            p["accuracy"] += 0.04 if p["seed"] else -0.04
    unclear = next_steps(noisy)[2]
    assert unclear.startswith("The learning curve cannot tell") and "-4.0 points from 10 to 20" in unclear
    assert "differ by up to 9.0 points" in unclear and "flat" not in unclear


def test_next_steps_say_when_too_few_validation_cells_leave_the_confidences_uncalibrated():
    """BCCD's 20 cells per class leave 13 to stop the fine-tuning: no temperature, so no count for the
    sample's mix in `wbcedge run`; with 20 (the report above has 4 per class) nothing is said."""
    pytest.importorskip("sklearn", reason="the held-out results use the report extra (scikit-learn)")
    from wbcedge.train.adapt_report import next_steps

    assert not any("confidence temperature" in step for step in next_steps(_report_for_next_steps([0.6, 0.7, 0.8])))
    few = _report_for_next_steps([0.6, 0.7, 0.8])
    for c in few["site"]["counts"].values():
        c["val"] = 3
    last = next_steps(few)[-1]
    assert last.startswith("Only 15 labelled cells stop the fine-tuning, and a confidence temperature needs 20")
    assert "about 5 more" in last and "no count for the sample's class mix" in last


def test_the_reports_count_for_the_cells_mix_is_the_runners_estimate_with_the_bundles_temperature():
    """Exact even-prior posteriors of cells drawn 70% neutrophils: counting top classes over-counts the
    monocytes that lie between types, the EM column does not; and it is computed from the probabilities
    the runner would see, with the bundle's temperature applied."""
    from wbcedge.device.class_mix import estimate_mix
    from wbcedge.device.confidence import apply_temperature
    from wbcedge.train.adapt_report import held_out_differential

    rng = np.random.default_rng(0)
    centres = np.array([[0, 3], [3, 3], [0, 0], [1.5, 1.0], [3, 0]], float)   # monocytes between the others
    y = rng.choice(5, size=2000, p=[0.0, 0.15, 0.1, 0.05, 0.7])
    x = centres[y] + rng.normal(0, 1, (len(y), 2))
    log_lik = -0.5 * ((x[:, None] - centres[None]) ** 2).sum(-1)
    probs = np.exp(log_lik - log_lik.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    stages = {"parent": probs, "adapted_int8": probs}
    calibrated = held_out_differential(y, stages, list(CLASSES))
    assert calibrated["adapted_int8"]["monocyte"] > 2 * calibrated["true"]["monocyte"]
    assert calibrated["adapted_int8_mix_max_error_pp"] < calibrated["adapted_int8_max_error_pp"] / 3   # 3.2 against 12.7
    sharpened = held_out_differential(y, stages, list(CLASSES), temperature=0.5)
    want = estimate_mix(apply_temperature(probs, 0.5)).mix
    assert [sharpened["adapted_int8_mix"][c] for c in CLASSES] == pytest.approx(list(want))
    assert sharpened["adapted_int8_mix"] != pytest.approx(calibrated["adapted_int8_mix"], abs=1e-3)
    assert sharpened["adapted_int8"] == calibrated["adapted_int8"]       # the top classes do not move


def test_the_report_gives_the_held_out_cells_differential_as_labelled_and_as_each_model_counts_it():
    """Half the 20 eosinophils called neutrophils: the adapted count has 10 eosinophils too few and 10
    neutrophils too many (10 of 53 cells: 18.9 points); the parent calls everything a monocyte."""
    pytest.importorskip("sklearn", reason="the held-out results use the report extra (scikit-learn)")
    d = _report_for_next_steps([0.6, 0.7, 0.8])["held_out"]["differential"]
    assert d["true"]["eosinophil"] == pytest.approx(20 / 53) and d["true"]["monocyte"] == pytest.approx(10 / 53)
    assert d["adapted_int8"]["eosinophil"] == pytest.approx(10 / 53)
    assert d["adapted_int8"]["neutrophil"] == pytest.approx(30 / 53)
    assert d["adapted_int8_max_error_pp"] == pytest.approx(100 * 10 / 53)
    assert d["parent"]["monocyte"] == 1.0 and d["parent_max_error_pp"] == pytest.approx(100 * 43 / 53)
    assert sum(d["adapted_int8"].values()) == pytest.approx(1.0) and sum(d["true"].values()) == pytest.approx(1.0)
    # the count for these cells' mix (EM, as `wbcedge run` gives it): certain calls leave nothing to re-weigh
    assert d["adapted_int8_mix"] == pytest.approx(d["adapted_int8"], abs=1e-6)
    assert d["adapted_int8_mix_max_error_pp"] == pytest.approx(100 * 10 / 53, abs=1e-4)
