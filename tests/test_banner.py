"""The demonstration and domain-shift notices read as sentences, for plain and for adapted bundles."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from wbcedge.bundle import DEFAULT_BUNDLE, MANIFEST, load_bundle, write_manifest
from wbcedge.cli import app
from wbcedge.device.banner import banners, demo_origin, reference_cells

ADAPTATION = {"parent_run": "training/runs/robust-edge-step1-wise", "adapted_classes": ["neutrophil"],
              "held_out_accuracy": {"parent": 0.35, "adapted_int8": 0.73}, "better_than_parent": True}
SCORED_ALARM = {"alarm": True, "score": 7.1, "threshold": 3.0, "cells": 7, "cells_beyond_cell_threshold": 4}


def test_a_plain_bundle_names_its_training_data_once():
    check = load_bundle().manifest["other_microscope_check"]
    meta = {"builtin_samples": True, "other_microscope_check": check}
    assert reference_cells(meta) == f"the model's training data ({check['trained_on']})"
    demo, shift = banners({**meta, "domain_shift": {"alarm": True}})
    assert f"from another microscope than the model's training data ({check['trained_on']})." in demo
    assert f"look unlike the model's training data ({check['trained_on']});" in shift
    assert banners({**meta, "domain_shift": SCORED_ALARM})[1].startswith(
        f"DOMAIN SHIFT: these 7 cells look unlike the model's training data ({check['trained_on']}) (shift score")


def test_a_bundle_without_a_training_data_note_is_not_garbled():
    meta = {"builtin_samples": True}
    assert reference_cells(meta) == "the model's training data"
    for notice in banners({**meta, "domain_shift": {"alarm": True}}):
        assert "(the model's training data)" not in notice
        assert "training data ()" not in notice and ".." not in notice


def test_an_adapted_bundle_is_compared_with_its_site():
    meta = {"builtin_samples": True, "adaptation": ADAPTATION}
    assert reference_cells(meta) == "the cells of the microscope this model was adapted to"
    assert demo_origin(meta) == "public BCCD images, not your own slides"
    demo, shift = banners({**meta, "domain_shift": {"alarm": True}})
    assert demo.startswith("DEMONSTRATION, not a result: these are the built-in sample frames, public BCCD "
                           "images, not your own slides. ")
    assert shift.startswith("DOMAIN SHIFT: these images look unlike the cells of the microscope this model was "
                            "adapted to; ")
    scored = banners({**meta, "domain_shift": SCORED_ALARM})[1]
    assert scored.startswith("DOMAIN SHIFT: these 7 cells look unlike the cells of the microscope this model was "
                             "adapted to (shift score 7.10")
    for notice in (demo, shift, scored):
        assert "training data" not in notice
    # what is known of its accuracy is its site's held-out figure, not "not measured"
    assert ("On the held-out cells of the microscope it was adapted to, the model classified 73.0% correctly "
            "(its parent 35.0%).") in demo and "not measured" not in demo + shift
    counted = {**ADAPTATION, "site_counts": {"neutrophil": {"fit": 9, "val": 2, "held_out": 15},
                                             "basophil": {"fit": 0, "val": 0, "held_out": 5}}}
    assert "On the 20 held-out cells of the microscope" in banners({"builtin_samples": True, "adaptation": counted})[0]


def test_run_with_an_adapted_bundle_prints_the_adapted_wording(tmp_path):
    bundle = tmp_path / "adapted"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    manifest = json.loads((bundle / MANIFEST).read_text())
    meta = {k: v for k, v in manifest.items() if k not in ("format", "format_version", "created", "files",
                                                            "other_microscope_check")}
    write_manifest(bundle, {**meta, "adaptation": ADAPTATION})
    res = CliRunner().invoke(app, ["run", "--bundle", str(bundle), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    flat = " ".join(res.output.replace("│", " ").split())
    assert "public BCCD images, not your own slides" in flat
    assert "(the model's training data)" not in flat and "than the model's training data" not in flat
    page = (tmp_path / "s" / "report.html").read_text(encoding="utf-8")
    assert "public BCCD images, not your own slides" in page
