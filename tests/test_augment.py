"""Offline augmentation: geometry, balance, determinism, and no leaks through `source`."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from wbcedge import data
from wbcedge.cli import app
from wbcedge.errors import OutputFolderError
from wbcedge.labels import CLASSES

runner = CliRunner()


def flat_picture(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A bright, lightly textured picture: any blank (black) pixel an augmentation brings in stands out."""
    return np.random.default_rng(seed).integers(180, 256, (h, w, 3)).astype(np.uint8)


@pytest.fixture
def split_samples() -> list[data.Record]:
    """The committed PBC samples, split 2 train / 1 val / 1 test per class."""
    records = data.index_folder(data.SAMPLES_DIR, workers=1).records
    data.split_records(records, seed=0, test_per_class=1)
    return records


def files_under(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


# ---------------------------------------------------------------- one picture

def test_fill_scale_matches_the_geometry():
    assert data.rotation_fill_scale(100, 100, 0) == pytest.approx(1.0)
    assert data.rotation_fill_scale(100, 100, 90) == pytest.approx(1.0)
    assert data.rotation_fill_scale(360, 363, 90) == pytest.approx(362 / 359)
    assert data.rotation_fill_scale(101, 101, 15) == pytest.approx(np.cos(np.radians(15)) + np.sin(np.radians(15)))
    assert data.rotation_fill_scale(101, 101, -15) == data.rotation_fill_scale(101, 101, 15)


@pytest.mark.parametrize("size", [(61, 50), (50, 61), (64, 64), (360, 363)])
def test_rotation_leaves_no_blank_border(size):
    w, h = size
    picture = flat_picture(w, h)
    for k in range(48):  # covers all 8 signed angles many times
        out = data.augment_image(picture, np.random.default_rng([1, k]))
        assert out.shape == picture.shape and out.dtype == np.uint8
        assert out.min() >= 170, f"blank pixels after augmentation {k} of a {w}x{h} picture"
    # The check can see a blank corner: the same rotation without the fill crop leaves one.
    plain = cv2.warpAffine(picture, cv2.getRotationMatrix2D(((w - 1) / 2, (h - 1) / 2), 5, 1.0), (w, h))
    assert plain.min() == 0


def test_aspect_is_kept_on_a_non_square_picture():
    picture = np.full((100, 140, 3), 230, np.uint8)
    cv2.circle(picture, (70, 50), 18, (40, 20, 120), -1)
    most = max(data.rotation_fill_scale(140, 100, a) for a in data.ROTATIONS)  # 90 degrees: 139/99
    for k in range(16):
        out = data.augment_image(picture, np.random.default_rng([2, k]))
        ys, xs = np.nonzero(out[:, :, 0] < 135)
        width, height = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
        assert abs(width - height) <= 2, f"a circle came out {width}x{height}"
        # zoomed in by 5-20 %, on top of the crop that fills the frame again
        assert 37 * 1.05 - 1 <= width <= 37 * 1.2 * most + 2


def test_augmentations_vary_and_repeat_per_generator_seed():
    picture = cv2.imread(str(data.SAMPLES_DIR / "neutrophil" / "SNE_250922.jpg"))
    a = data.augment_image(picture, np.random.default_rng(3))
    assert np.array_equal(a, data.augment_image(picture, np.random.default_rng(3)))
    outs = [data.augment_image(picture, np.random.default_rng(s)).tobytes() for s in range(8)]
    assert len(set(outs)) == 8 and picture.tobytes() not in outs


def test_plan_uses_every_source_about_equally():
    plan = data.plan_copies(7, 30, random.Random(0))
    assert sum(plan) == 30 and max(plan) - min(plan) <= 1
    assert data.plan_copies(7, 30, random.Random(0)) == plan
    assert data.plan_copies(5, -3, random.Random(0)) == [0] * 5
    assert data.plan_copies(0, 10, random.Random(0)) == []


# ---------------------------------------------------------------- a whole train split

def test_augment_balances_train_and_leaves_val_test_alone(split_samples, tmp_path):
    before = [data.Record(**vars(r)) for r in split_samples]
    result = data.augment_records(split_samples, tmp_path / "aug", per_class=7, seed=5, workers=1)

    assert result.records[: len(before)] == before  # every original row unchanged, val/test included
    augmented = result.records[len(before):]
    originals = {r.path: r for r in before}
    for c in CLASSES:
        assert result.per_class[c] == {"originals": 2, "sources": 2, "augmented": 5, "train": 7}
        per_source = [sum(r.source == s.path for r in augmented)
                      for s in before if s.label == c and s.split == "train"]
        assert sorted(per_source) == [2, 3]
    for r in augmented:
        source = originals[r.source]
        assert r.split == "train" and source.split == "train" and r.label == source.label
        assert Path(r.path).parent == tmp_path / "aug" / r.label
        assert Path(r.path).name.startswith(Path(source.path).stem + "_aug")
        assert r.sha256 == hashlib.sha256(Path(r.path).read_bytes()).hexdigest()
        assert (r.width, r.height) == (source.width, source.height)
    assert len(augmented) == len(files_under(tmp_path / "aug")) == 25
    assert data.straddling_groups(result.records) == {}

    manifest = tmp_path / "aug" / "manifest.csv"
    data.write_manifest(result.records, manifest)
    again = data.read_manifest(manifest)
    assert [r.source for r in again[len(before):]] == [str(Path(r.source).resolve()) for r in augmented]
    assert data.check_records(again, workers=1).ok


def test_val_and_test_files_are_never_read(split_samples, tmp_path):
    """Point val/test rows at files that do not exist: augmentation must not notice."""
    for r in split_samples:
        if r.split in ("val", "test"):
            r.path = str(tmp_path / "gone" / Path(r.path).name)
    result = data.augment_records(split_samples, tmp_path / "aug", per_class=4, seed=0, workers=1)
    assert not result.problems
    assert all(Path(r.source).exists() for r in result.records if r.source)


def test_same_seed_same_bytes_whatever_the_workers_and_another_seed_differs(split_samples, tmp_path):
    def run(name, seed, workers):
        records = [data.Record(**vars(r)) for r in split_samples]
        data.augment_records(records, tmp_path / name, per_class=4, seed=seed, workers=workers)
        return files_under(tmp_path / name)

    first = run("a", 11, 1)
    assert len(first) == 10
    assert run("b", 11, 2) == first  # identical names and bytes, in-process or through the pool
    other = run("c", 12, 1)
    assert other.keys() == first.keys()
    assert all(other[name] != first[name] for name in first)


def test_what_augment_refuses_and_what_it_reports(split_samples, tmp_path):
    big = data.augment_records(split_samples, tmp_path / "none", per_class=2, workers=1)
    assert big.records == split_samples and big.per_class["basophil"]["augmented"] == 0
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not empty"):
        data.augment_records(split_samples, tmp_path / "full", per_class=3, workers=1)
    done = data.augment_records(split_samples, tmp_path / "once", per_class=3, workers=1)
    with pytest.raises(ValueError, match="already holds augmented rows"):
        data.augment_records(done.records, tmp_path / "twice", per_class=4, workers=1)
    with pytest.raises(ValueError, match="wbcedge data split"):
        data.augment_records([data.Record(r.path, r.label, r.sha256, r.width, r.height) for r in split_samples],
                             tmp_path / "unsplit", per_class=3, workers=1)

    # An unreadable train source: one line naming it, the rest goes on.
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    source = next(r for r in split_samples if r.split == "train" and r.label == "monocyte")
    source.path = str(broken)
    partial = data.augment_records(split_samples, tmp_path / "partial", per_class=6, seed=0, workers=1)
    assert len(partial.problems) == 1 and partial.problems[0].path == str(broken)
    assert "not made; monocyte falls short of 6" in partial.problems[0].action
    assert partial.per_class["monocyte"]["augmented"] == 2
    assert partial.per_class["basophil"]["augmented"] == 4


def test_identical_train_files_count_once_as_a_source(split_samples, tmp_path):
    train = [r for r in split_samples if r.split == "train" and r.label == "lymphocyte"]
    copy = data.Record(**{**vars(train[0]), "path": train[0].path + ".copy.jpg"})
    result = data.augment_records([*split_samples, copy], tmp_path / "aug", per_class=9, workers=1)
    assert result.per_class["lymphocyte"] == {"originals": 3, "sources": 2, "augmented": 6, "train": 9}


# ---------------------------------------------------------------- the command line

def test_cli_augment_then_check(tmp_path):
    manifest = tmp_path / "m.csv"
    assert runner.invoke(app, ["data", "index", str(data.SAMPLES_DIR), "--out", str(manifest)]).exit_code == 0
    assert runner.invoke(app, ["data", "split", str(manifest), "--test-per-class", "1"]).exit_code == 0
    manifest = tmp_path / "m.split.csv"  # split never overwrites its input
    out = tmp_path / "aug"
    res = runner.invoke(app, ["data", "augment", str(manifest), "--out", str(out), "--per-class", "5",
                              "--seed", "3", "--json", str(tmp_path / "aug.json")])
    assert res.exit_code == 0, res.output
    assert "15 augmented JPEGs" in res.output
    new = data.read_manifest(out / "manifest.csv")
    old = data.read_manifest(manifest)
    assert [r for r in new if r.split in ("val", "test")] == [r for r in old if r.split in ("val", "test")]
    res = runner.invoke(app, ["data", "check", str(out / "manifest.csv")])
    assert res.exit_code == 0, res.output

    # Move one augmented image's source into test: check must see the leak through `source`.
    leaked = next(r for r in new if r.source).source
    for r in new:
        if r.path == leaked:
            r.split = "test"
    data.write_manifest(new, out / "manifest.csv")
    res = runner.invoke(app, ["data", "check", str(out / "manifest.csv")])
    assert res.exit_code == 1 and f"{Path(leaked).name} (test)" in res.output

    res = runner.invoke(app, ["data", "augment", str(manifest), "--out", str(out)])
    assert res.exit_code == 6 and "not empty" in res.output  # an output folder problem
