"""The differential (counts, exact intervals, flags) and the files a run leaves behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from wbcedge.device.differential import ADULT_REFERENCE, betainc, clopper_pearson, differential, load_reference
from wbcedge.labels import CLASSES
from wbcedge.device.records import Recorder
from wbcedge.device.report import format_differential, write_outputs

CASES = [(0, 1), (1, 1), (0, 10), (3, 10), (10, 10), (1, 100), (50, 100), (99, 100), (17, 200),
         (4500, 10000), (2, 100000), (123, 456)]


@pytest.mark.parametrize("k, n", CASES)
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy(k: int, n: int, level: float) -> None:
    stats = pytest.importorskip("scipy.stats")
    alpha = 1 - level
    want_lo = 0.0 if k == 0 else stats.beta.ppf(alpha / 2, k, n - k + 1)
    want_hi = 1.0 if k == n else stats.beta.ppf(1 - alpha / 2, k + 1, n - k)
    lo, hi = clopper_pearson(k, n, level)
    assert lo == pytest.approx(want_lo, abs=1e-10)
    assert hi == pytest.approx(want_hi, abs=1e-10)
    ci = stats.binomtest(k, n).proportion_ci(level, method="exact")
    assert (lo, hi) == pytest.approx((ci.low, ci.high), abs=1e-10)


def test_betainc_matches_scipy() -> None:
    special = pytest.importorskip("scipy.special")
    for a, b in [(0.5, 0.5), (1, 1), (2.5, 7), (30, 3), (400, 600)]:
        for x in np.linspace(0, 1, 11):
            assert betainc(a, b, float(x)) == pytest.approx(special.betainc(a, b, x), abs=1e-12)


def test_clopper_pearson_edges_and_bad_input() -> None:
    assert clopper_pearson(0, 0) == (0.0, 1.0)
    assert clopper_pearson(0, 30)[0] == 0.0 and clopper_pearson(30, 30)[1] == 1.0
    # the "rule of three": 0 of n puts the 95% upper bound near 3/n (one-sided) / 3.7/n (two-sided)
    assert clopper_pearson(0, 100)[1] == pytest.approx(0.0362, abs=1e-4)
    for bad in [(-1, 10), (11, 10), (1.5, 10)]:
        with pytest.raises(ValueError):
            clopper_pearson(*bad)
    with pytest.raises(ValueError, match="level"):
        clopper_pearson(1, 10, level=95)


def _labels() -> list[str]:
    return (["neutrophil"] * 80 + ["lymphocyte"] * 10 + ["monocyte"] * 5 + ["eosinophil"] * 3
            + ["basophil"] * 2 + ["unidentified"] * 7)


def test_differential_percentages_intervals_and_flags() -> None:
    diff = differential(_labels(), CLASSES)
    assert diff["classified"] == 100 and diff["unidentified"] == 7 and diff["total_cells"] == 107
    assert diff["classes"] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil"]
    types = diff["types"]
    assert sum(t["percent"] for t in types.values()) == pytest.approx(100.0)
    assert {c: t["count"] for c, t in types.items()} == {"basophil": 2, "eosinophil": 3, "lymphocyte": 10,
                                                          "monocyte": 5, "neutrophil": 80}
    assert {c: t["flag"] for c, t in types.items()} == {"neutrophil": "high", "lymphocyte": "low",
                                                         "monocyte": "", "eosinophil": "", "basophil": ""}
    for cls, t in types.items():
        lo, hi = clopper_pearson(t["count"], 100)
        assert (t["ci_low"], t["ci_high"]) == pytest.approx((100 * lo, 100 * hi))
        assert t["ci_low"] <= t["percent"] <= t["ci_high"]
        assert (t["reference_low"], t["reference_high"]) == ADULT_REFERENCE[cls]
    json.dumps(diff)  # plain data


def test_unidentified_cells_are_left_out_of_the_percentages() -> None:
    with_unknown = differential(["neutrophil", "lymphocyte", "unidentified", "unidentified"], CLASSES)
    without = differential(["neutrophil", "lymphocyte"], CLASSES)
    assert with_unknown["types"] == without["types"]
    assert with_unknown["unidentified"] == 2 and with_unknown["unidentified_percent_of_all"] == 50.0


def test_custom_reference_and_boundaries() -> None:
    diff = differential(["neutrophil"] * 7 + ["lymphocyte"] * 3, CLASSES, reference={"neutrophil": (40, 70)})
    assert diff["types"]["neutrophil"]["flag"] == ""      # 70% is inside 40-70
    assert diff["types"]["lymphocyte"]["flag"] == ""      # no range given: no flag
    assert diff["types"]["monocyte"]["percent"] == 0.0
    assert differential(["neutrophil"] * 7 + ["lymphocyte"] * 3, CLASSES)["types"]["monocyte"]["flag"] == "low"


def test_no_classified_cells() -> None:
    diff = differential(["unidentified"] * 3, CLASSES)
    assert diff["classified"] == 0 and diff["unidentified"] == 3
    assert all(t["percent"] is None and t["flag"] == "" for t in diff["types"].values())


def test_unknown_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="platelet"):
        differential(["neutrophil", "platelet"], CLASSES)


def test_load_reference_from_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "lab.json"
    j.write_text(json.dumps({"name": "our lab", "Neutrophils": [40, 70], "EOS": {"low": 0.5, "high": 5}}))
    assert load_reference(j) == {"neutrophil": (40.0, 70.0), "eosinophil": (0.5, 5.0)}
    t = tmp_path / "lab.toml"
    t.write_text('source = "lab manual 2024"\nlymphocyte = [20, 40]\nbasophil = [0, 1]\n')
    assert load_reference(t) == {"lymphocyte": (20.0, 40.0), "basophil": (0.0, 1.0)}
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"monocyte": [10, 2]}))
    with pytest.raises(ValueError, match="low <= high"):
        load_reference(bad)


# ---------------------------------------------------------------- report files

def _run_with_cells(tmp_path: Path) -> tuple[Path, list[str]]:
    run = tmp_path / "run"
    rng = np.random.default_rng(0)
    labels = []
    with Recorder(run) as rec:
        for f, (label, conf) in enumerate([("neutrophil", 0.95), ("neutrophil", 0.55), ("lymphocyte", 0.8),
                                           ("unidentified", 0.3), ("neutrophil", 0.75)]):
            crop = rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)
            rec.add_cell(f, f"frame{f}", (0, 0, 20, 20), label, conf, crop)
            rec.commit_frame(f, f"frame{f}")
            labels.append(label)
    return run, labels


def test_write_outputs(tmp_path: Path) -> None:
    run, labels = _run_with_cells(tmp_path)
    diff = differential(labels, CLASSES)
    paths = write_outputs(run, diff, {"source": "smear.avi", "model": "mobilenet_v2 int8"})
    assert set(paths) == {"json", "csv", "html"} and all(p.is_file() for p in paths.values())

    data = json.loads(paths["json"].read_text())
    assert data["meta"]["source"] == "smear.avi" and data["differential"]["classified"] == 4

    rows = list(csv.DictReader(paths["csv"].open()))
    assert [r["type"] for r in rows] == ["neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil",
                                         "unidentified", "classified_total"]
    neut = next(r for r in rows if r["type"] == "neutrophil")
    assert neut["count"] == "3" and float(neut["percent"]) == pytest.approx(75.0)
    assert next(r for r in rows if r["type"] == "unidentified")["count"] == "1"

    page = paths["html"].read_text()
    assert "<script" not in page and "http" not in page  # nothing fetched from outside
    assert "75.0" in page and "unidentified" in page and "smear.avi" in page
    # neutrophil gallery: least confident first, relative links into crops/
    first, second, third = (page.index(f"alt=\"neutrophil {c}\"") for c in ("0.55", "0.75", "0.95"))
    assert first < second < third
    assert 'src="crops/000001_00_neutrophil.jpg"' in page
    assert page.index('id="neutrophil"') < page.index('id="unidentified"')
    assert not list(run.glob("*.tmp"))


def test_format_differential_for_the_terminal() -> None:
    console = Console(record=True, width=120)
    console.print(format_differential(differential(_labels(), CLASSES)))
    text = console.export_text()
    assert "neutrophil" in text and "80.0" in text and "HIGH" in text and "LOW" in text
    assert "unidentified (excluded)" in text and "95% CI" in text
