"""The data layer: indexing, bad input, splitting without leaks, manifests and `wbcedge data check`."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from wbcedge import data
from wbcedge.cli import app
from wbcedge.labels import CLASSES, UnknownClassError

REPO = Path(__file__).resolve().parents[1]
KNOWN_DUPLICATE = ("eosinophil/EO_225902.jpg", "neutrophil/BNE_191112.jpg")  # same bytes, two classes
runner = CliRunner()


@pytest.fixture
def pbc_dir() -> Path:
    """The full PBC dataset next to the repo (../shared/data/pbc), or skip."""
    path = REPO.parent / "shared" / "data" / "pbc"
    if not path.is_dir():
        pytest.skip(f"{path} is absent (the shared PBC dataset is not on this machine)")
    return path


def cell_image(seed: int, w: int = 48, h: int = 40) -> np.ndarray:
    """A smooth random BGR picture, distinct per seed."""
    small = np.random.default_rng(seed).integers(40, 230, (4, 4, 3)).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def jpeg(seed: int, w: int = 48, h: int = 40) -> bytes:
    return cv2.imencode(".jpg", cell_image(seed, w, h))[1].tobytes()


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def put(path: Path, content: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture
def messy(tmp_path: Path) -> Path:
    """A class-folder tree with everything real data throws at a data layer.

    Folder names need normalising; EOS/dup.jpg and Basophils/dup.jpg are the same bytes
    under two classes; EOS/same_a and same_b are the same bytes under one class.
    """
    root = tmp_path / "cells"
    seed = 0
    for folder in ("Basophils", "EOS", "lymph", "Mono", "SNE"):
        for i in range(6):
            seed += 1
            put(root / folder / f"{folder.lower()}_{i}.jpg", jpeg(seed))
    conflict = jpeg(1000)
    put(root / "EOS" / "dup.jpg", conflict)
    put(root / "Basophils" / "dup.jpg", conflict)
    same = jpeg(2000)
    put(root / "EOS" / "same_a.jpg", same)
    put(root / "EOS" / "same_b.jpg", same)
    bad = root / "SNE"
    put(bad / "corrupt.jpg", b"\xff\xd8\xff\xe0" + np.random.default_rng(5).bytes(500) + b"\xff\xd9")
    put(bad / "html.jpg", b"<html>404 Not Found</html>\n")  # an error page saved as a picture
    put(bad / "zero.jpg", b"")
    whole = jpeg(3000, 96, 96)
    put(bad / "truncated.jpg", whole[: len(whole) * 2 // 3])
    put(bad / "notes.txt", b"counted by hand\n")
    put(bad / "gray.png", png(cell_image(4000)[:, :, 0]))
    put(bad / "rgba.png", png(cv2.cvtColor(cell_image(4001), cv2.COLOR_BGR2BGRA)))
    put(bad / "deep.png", png(cell_image(4002).astype(np.uint16) * 257))
    put(bad / "tiny.png", png(cell_image(4003, 20, 20)))
    (root / "Lymphocytes").mkdir()  # an empty class folder
    put(root / "README.txt", b"where these came from\n")
    return root


def problem_for(problems: list[data.Problem], name: str) -> data.Problem:
    hits = [p for p in problems if Path(p.path).name == name]
    assert len(hits) == 1, f"expected one line about {name}, got {hits}"
    return hits[0]


def cli(*args: str):
    return runner.invoke(app, ["data", *map(str, args)])


# ---------------------------------------------------------------- indexing

def test_index_normalises_folder_names_and_records_files(messy):
    result = data.index_folder(messy, workers=1)
    by_name = {Path(r.path).name: r for r in result.records}
    assert by_name["basophils_0.jpg"].label == "basophil"
    assert by_name["eos_0.jpg"].label == "eosinophil"
    assert by_name["lymph_0.jpg"].label == "lymphocyte"
    assert by_name["mono_0.jpg"].label == "monocyte"
    assert by_name["sne_0.jpg"].label == "neutrophil"
    r = by_name["eos_0.jpg"]
    assert (r.width, r.height) == (48, 40)
    assert r.sha256 == hashlib.sha256(Path(r.path).read_bytes()).hexdigest()
    assert r.split == "" and r.source == ""


def test_every_bad_file_gets_one_line_and_nothing_is_dropped_silently(messy):
    result = data.index_folder(messy, workers=2)  # through the process pool as the CLI runs it
    skipped = {"corrupt.jpg": "not a readable image", "html.jpg": "not a readable image", "zero.jpg": "empty file",
               "truncated.jpg": "truncated JPEG", "notes.txt": "not an image file",
               "README.txt": "outside the class folders"}
    for name, what in skipped.items():
        p = problem_for(result.problems, name)
        assert what in p.what and p.action == "skipped"
    kept = {"gray.png": "grayscale", "rgba.png": "RGBA", "deep.png": "16-bit", "tiny.png": "tiny (20x20)"}
    for name, what in kept.items():
        p = problem_for(result.problems, name)
        assert what in p.what and p.action.startswith("kept")
    empty = problem_for(result.problems, "Lymphocytes")
    assert empty.what == "empty class folder"
    assert len(result.problems) == len(skipped) + len(kept) + 1

    indexed = {Path(r.path) for r in result.records}
    reported = {Path(p.path) for p in result.problems}
    assert {p.name for p in indexed & reported} == set(kept)  # kept, and said so
    assert not {p.name for p in indexed} & set(skipped)
    assert {p for p in messy.rglob("*") if p.is_file()} <= indexed | reported


def test_unknown_folder_is_an_error_listing_the_classes_unless_mapped(messy):
    put(messy / "Platelets" / "p.jpg", jpeg(9))
    with pytest.raises(UnknownClassError) as err:
        data.index_folder(messy, workers=1)
    assert "'Platelets'" in str(err.value) and all(c in str(err.value) for c in CLASSES)

    skipped = data.index_folder(messy, {"Platelets": "skip"}, workers=1)
    assert problem_for(skipped.problems, "Platelets").action == "left out"
    assert not any("Platelets" in r.path for r in skipped.records)
    mapped = data.index_folder(messy, {"platelets": "monocyte"}, workers=1)
    assert {r.label for r in mapped.records if "Platelets" in r.path} == {"monocyte"}


def test_index_cli_reports_unknown_folders_and_accepts_map(messy, tmp_path):
    put(messy / "Platelets" / "p.jpg", jpeg(9))
    out = tmp_path / "m.csv"
    res = cli("index", messy, "--out", out)
    assert res.exit_code == 2 and "Platelets" in res.output and "--map" in res.output
    assert not out.exists()
    res = cli("index", messy, "--out", out, "--map", "nonsense")
    assert res.exit_code == 2 and "NAME=CLASS" in res.output
    res = cli("index", messy, "--out", out, "--map", "Platelets=plasma")
    assert res.exit_code == 2 and "not a class" in res.output

    res = cli("index", messy, "--out", out, "--map", "Platelets=skip", "--json", tmp_path / "index.json")
    assert res.exit_code == 0, res.output
    assert "truncated.jpg: truncated JPEG" in res.output  # one line per bad file
    summary = json.loads((tmp_path / "index.json").read_text())
    assert summary["images"] == len(data.read_manifest(out)) == 30 + 4 + 4
    assert summary["conflicting_groups"] == 1 and summary["duplicate_groups"] == 2
    assert {Path(p["path"]).name for p in summary["problems"]} >= {"zero.jpg", "corrupt.jpg", "Platelets"}


# ---------------------------------------------------------------- splitting

def synthetic_records(per_class: int = 40) -> list[data.Record]:
    """Records (no files) with duplicate groups inside classes and one across two classes."""
    records = []
    for c in CLASSES:
        for i in range(per_class):
            digest = f"{c}-{i // 3 if i < 12 else i}"  # the first 12 come in groups of 3
            records.append(data.Record(f"/d/{c}/{i}.jpg", c, digest, 10, 10))
    records.append(data.Record("/d/eosinophil/x.jpg", "eosinophil", "shared", 10, 10))
    records.append(data.Record("/d/neutrophil/x.jpg", "neutrophil", "shared", 10, 10))
    return records


def splits_of(records):
    return {r.path: r.split for r in records}


def test_paper_split_keeps_groups_together_and_excludes_the_conflict():
    records = synthetic_records()
    excluded = data.split_records(records, seed=3, test_per_class=10, val_fraction=0.2)
    assert len(excluded) == 1
    assert "/d/eosinophil/x.jpg" in excluded[0].path and "/d/neutrophil/x.jpg" in excluded[0].path
    assert "eosinophil and neutrophil" in excluded[0].what
    assert {r.split for r in records if r.sha256 == "shared"} == {data.EXCLUDED}
    assert data.straddling_groups(records) == {}
    for digest, group in data.duplicate_groups(records).items():
        assert len({r.split for r in group}) == 1, digest
    counts = data.counts_by_split(records)
    for c in CLASSES:
        row = counts[c]
        assert 10 <= row["test"] <= 12  # a group of 3 may overshoot by 2
        rest = row["train"] + row["val"]
        assert abs(row["val"] - 0.2 * rest) <= 2
        assert row["train"] + row["val"] + row["test"] == 40


def test_split_is_reproducible_per_seed_and_per_class():
    a, b, c = synthetic_records(), synthetic_records(), synthetic_records()
    data.split_records(a, seed=7, test_per_class=5)
    data.split_records(b, seed=7, test_per_class=5)
    data.split_records(c, seed=8, test_per_class=5)
    assert splits_of(a) == splits_of(b)
    assert splits_of(a) != splits_of(c)
    # Each class draws from its own generator: dropping a class leaves the others alone.
    d = [r for r in synthetic_records() if r.label != "basophil"]
    data.split_records(d, seed=7, test_per_class=5)
    assert all(splits_of(a)[path] == split for path, split in splits_of(d).items())


def test_fractional_split_and_bad_arguments():
    records = synthetic_records(per_class=100)
    data.split_records(records, seed=0, test_per_class=None, test_fraction=0.25, val_fraction=0.1)
    for c, row in data.counts_by_split(records).items():
        assert 25 <= row["test"] <= 27, (c, row)
        assert abs(row["val"] - 0.1 * (row["train"] + row["val"])) <= 2
    with pytest.raises(ValueError, match="choose one protocol"):
        data.split_records(records, test_per_class=5, test_fraction=0.2)
    with pytest.raises(ValueError, match="not enough"):
        data.split_records(synthetic_records(per_class=5), test_per_class=5)
    augmented = [*records[:3], data.Record("/o/a.jpg", records[0].label, "z", 10, 10, "train", records[0].path)]
    with pytest.raises(ValueError, match="augmented rows"):
        data.split_records(augmented, test_per_class=1)


# ---------------------------------------------------------------- manifests and check

def test_manifest_round_trip_with_relative_paths(messy, tmp_path):
    records = data.index_folder(messy, workers=1).records
    data.split_records(records, seed=1, test_per_class=1)
    path = tmp_path / "manifests" / "m.csv"
    data.write_manifest(records, path)
    with path.open() as f:
        rows = list(csv.DictReader(f))
    assert rows[0]["path"].startswith("../cells/")
    assert data.read_manifest(path) == [
        data.Record(str(Path(r.path).resolve()), r.label, r.sha256, r.width, r.height, r.split) for r in records]
    path.write_text(path.read_text().replace(",40,", ",forty,", 1))
    with pytest.raises(ValueError, match="line 2"):
        data.read_manifest(path)


def split_manifest(root: Path, tmp_path: Path) -> Path:
    out = tmp_path / "m.csv"
    assert cli("index", root, "--out", out).exit_code == 0
    res = cli("split", out, "--test-per-class", "2", "--seed", "1")
    assert res.exit_code == 0, res.output
    return tmp_path / "m.split.csv"


def rewrite(manifest: Path, change) -> None:
    with manifest.open() as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        change(row)
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=data.FIELDS)
        writer.writeheader()
        writer.writerows(rows)


def test_check_passes_a_clean_split_and_lists_what_it_found(messy, tmp_path):
    manifest = split_manifest(messy, tmp_path)
    res = cli("check", manifest, "--json", tmp_path / "check.json")
    assert res.exit_code == 0, res.output
    assert "CONFLICTING LABELS" in res.output and "dup.jpg" in res.output
    for name in ("gray.png", "rgba.png", "deep.png", "tiny.png"):
        assert name in res.output
    report = json.loads((tmp_path / "check.json").read_text())
    assert report["ok"] and report["straddling_groups"] == [] and len(report["odd"]) == 4
    conflict = report["conflicting_groups"][0]["files"]
    assert {f["label"] for f in conflict} == {"basophil", "eosinophil"}
    assert {f["split"] for f in conflict} == {data.EXCLUDED}
    assert sum(row["test"] for row in report["counts"].values()) >= 10


def test_check_fails_when_identical_files_straddle_splits(messy, tmp_path):
    manifest = split_manifest(messy, tmp_path)
    rewrite(manifest, lambda row: row.update(split="test" if row["path"].endswith("same_a.jpg") else
                                            "train" if row["path"].endswith("same_b.jpg") else row["split"]))
    res = cli("check", manifest)
    assert res.exit_code == 1
    assert "Groups in more than one split: 1" in res.output
    assert "same_a.jpg (test)" in res.output and "same_b.jpg (train)" in res.output


def test_check_sees_through_augmentation_source(messy, tmp_path):
    manifest = split_manifest(messy, tmp_path)
    records = data.read_manifest(manifest)
    source = next(r for r in records if r.split == "test")
    copy = put(tmp_path / "aug" / "copy.jpg", jpeg(77))
    records.append(data.Record(str(copy), source.label, hashlib.sha256(copy.read_bytes()).hexdigest(),
                               48, 40, "train", source.path))
    data.write_manifest(records, manifest)
    res = cli("check", manifest)
    assert res.exit_code == 1 and "copy.jpg (train)" in res.output


def test_check_fails_on_missing_or_changed_files(messy, tmp_path):
    manifest = split_manifest(messy, tmp_path)
    (messy / "Mono" / "mono_0.jpg").unlink()
    (messy / "lymph" / "lymph_0.jpg").write_bytes(jpeg(555))
    res = cli("check", manifest)
    assert res.exit_code == 1
    assert "mono_0.jpg: missing" in res.output and "lymph_0.jpg: bytes changed since indexing" in res.output


def test_cli_errors_say_what_to_do(tmp_path):
    res = cli("check", tmp_path / "nope.csv")
    assert res.exit_code == 2 and "wbcedge data index" in res.output
    res = cli("index", tmp_path / "nowhere")
    assert res.exit_code == 2 and "sub-folder per class" in res.output
    put(tmp_path / "bad" / "EOS" / "zero.jpg", b"")
    res = cli("index", tmp_path / "bad", "--out", tmp_path / "bad.csv")
    assert res.exit_code == 2 and "zero.jpg: empty file" in res.output and "no usable images" in res.output
    put(tmp_path / "m.csv", b"path,label\n")
    res = cli("split", tmp_path / "m.csv")
    assert res.exit_code == 2 and "missing columns" in res.output
    res = cli("split", tmp_path / "m.csv", "--test-per-class", "3", "--test-fraction", "0.2")
    assert res.exit_code == 2 and "not both" in res.output


# ---------------------------------------------------------------- the committed samples

def test_samples_index_split_and_check_cleanly(tmp_path):
    result = data.index_folder(data.SAMPLES_DIR, workers=1)
    assert [Path(p.path).name for p in result.problems] == ["ATTRIBUTION.md"]
    assert len(result.records) == 20
    assert {c: sum(r.label == c for r in result.records) for c in CLASSES} == {c: 4 for c in CLASSES}
    names = [Path(r.path).name for r in result.records if r.label == "neutrophil"]
    assert any(n.startswith(("SNE_", "BNE_")) for n in names)
    assert all(360 <= r.width < r.height <= 370 for r in result.records)

    manifest = tmp_path / "samples.csv"
    assert cli("index", data.SAMPLES_DIR, "--out", manifest).exit_code == 0
    assert cli("split", manifest, "--test-per-class", "1").exit_code == 0
    res = cli("check", tmp_path / "samples.split.csv", "--json", "-")
    assert res.exit_code == 0
    report = json.loads(res.stdout[res.stdout.index("{"):])
    assert report["ok"] and report["counts"]["monocyte"] == {"train": 2, "val": 1, "test": 1, "excluded": 0}


def test_samples_are_unmodified_pbc_files(pbc_dir):
    for path in sorted(data.SAMPLES_DIR.glob("*/*.jpg")):
        original = pbc_dir / path.parent.name / path.name
        assert original.read_bytes() == path.read_bytes(), path


def test_known_pbc_cross_class_duplicate_is_reported_and_excluded(pbc_dir, tmp_path):
    root = tmp_path / "pbc"
    for rel in KNOWN_DUPLICATE:
        put(root / rel, (pbc_dir / rel).read_bytes())
    for sample in data.SAMPLES_DIR.glob("*/*.jpg"):
        put(root / sample.parent.name / sample.name, sample.read_bytes())
    manifest = split_manifest(root, tmp_path)
    res = cli("check", manifest)
    assert res.exit_code == 0, res.output
    line = next(l for l in res.output.splitlines() if "CONFLICTING LABELS" in l)
    assert "EO_225902.jpg (eosinophil, excluded)" in line and "BNE_191112.jpg (neutrophil, excluded)" in line
    excluded = [r for r in data.read_manifest(manifest) if r.split == data.EXCLUDED]
    assert sorted(Path(r.path).name for r in excluded) == ["BNE_191112.jpg", "EO_225902.jpg"]



def test_split_never_overwrites_its_input_and_too_few_images_names_the_options(tmp_path):
    manifest = tmp_path / "m.csv"
    assert cli("index", data.SAMPLES_DIR, "--out", manifest).exit_code == 0
    before = manifest.read_bytes()
    res = cli("split", manifest, "--test-per-class", "1")
    assert res.exit_code == 0, res.output
    assert manifest.read_bytes() == before
    assert {r.split for r in data.read_manifest(tmp_path / "m.split.csv")} == {"train", "val", "test"}
    res = cli("split", manifest, "--test-per-class", "1", "--out", manifest)
    assert res.exit_code == 2 and "is the input manifest" in res.output
    assert manifest.read_bytes() == before
    res = cli("split", manifest, "--test-per-class", "4")  # 4 images per class: none left to train on
    assert res.exit_code == 2
    assert "--test-per-class" in res.output and "--test-fraction" in res.output
