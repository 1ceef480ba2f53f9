"""The data layer never truncates a manifest and reports every file it cannot use."""

from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

import pytest
from adv_helpers import cli, png_header_only

from wbcedge import data
from wbcedge.data.manifest import ManifestError, read_manifest, write_manifest

SAMPLES = Path(__file__).resolve().parents[2] / "wbcedge" / "samples" / "pbc"


def _tree(root: Path, per_class: int = 2) -> Path:
    """A small class-folder tree of real PBC sample crops."""
    for cls in sorted(p.name for p in SAMPLES.iterdir() if p.is_dir()):
        (root / cls).mkdir(parents=True)
        for src in sorted((SAMPLES / cls).glob("*.jpg"))[:per_class]:
            shutil.copy(src, root / cls / src.name)
    return root


def test_a_crash_while_writing_a_manifest_leaves_the_old_one_intact(tmp_path, monkeypatch):
    records = data.index_folder(_tree(tmp_path / "set")).records
    path = tmp_path / "manifest.csv"
    write_manifest(records, path)
    before = path.read_bytes()

    class Crash(Exception):
        pass

    real = csv.DictWriter.writerow
    calls = []

    def crash_midway(self, row):
        calls.append(1)
        if len(calls) == 3:
            raise Crash("power cut")
        return real(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", crash_midway)
    with pytest.raises(Crash):
        write_manifest(records[:1] * 50, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_names_that_are_not_utf8_are_reported_and_skipped(tmp_path, capsys):
    root = _tree(tmp_path / "set")
    src = next((root / "neutrophil").glob("*.jpg"))
    bad_file = os.path.join(os.fsencode(root / "neutrophil"), b"cell-\xff.jpg")
    shutil.copy(src, os.fsdecode(bad_file))
    os.mkdir(os.path.join(os.fsencode(root), b"lymph\xe9"))
    result = data.index_folder(root)
    reported = {p.path.rsplit("/", 1)[-1]: p for p in result.problems}
    assert "cell-\\xff.jpg" in reported and "lymph\\xe9" in reported
    assert all("\\x" not in r.path and r.path.encode("utf-8") for r in result.records)
    code, out, err = cli(["data", "index", str(root), "--out", str(tmp_path / "m.csv")], capsys)
    assert code == 0 and "Traceback" not in err and "not valid UTF-8" in out
    read_manifest(tmp_path / "m.csv")


def test_an_absurd_header_is_a_bad_file_for_index_and_check(tmp_path, capsys):
    root = _tree(tmp_path / "set")
    (root / "monocyte" / "bomb.png").write_bytes(png_header_only(200_000, 200_000))
    result = data.index_folder(root)
    bad = [p for p in result.problems if p.path.endswith("bomb.png")]
    assert len(bad) == 1 and "pixel budget" in bad[0].what and bad[0].action == "skipped"
    # The same file swapped in after indexing: `check` reports it, it does not crash.
    manifest = tmp_path / "m.csv"
    write_manifest(result.records, manifest)
    victim = Path(result.records[0].path)
    victim.write_bytes(png_header_only(200_000, 200_000))
    code, out, err = cli(["data", "check", str(manifest)], capsys)
    assert "Traceback" not in err and "pixel budget" in out and code == 1


def test_dangling_links_and_link_loops_are_reported(tmp_path):
    root = _tree(tmp_path / "set")
    os.symlink(tmp_path / "gone.jpg", root / "basophil" / "dangling.jpg")
    os.symlink(root / "basophil" / "loop.jpg", root / "basophil" / "loop.jpg")
    os.symlink(root / "eosinophil", root / "basophil" / "linked-folder")
    problems = {Path(p.path).name: p.what for p in data.index_folder(root).problems}
    assert problems["dangling.jpg"].startswith("dangling symbolic link")
    assert problems["loop.jpg"] == "symbolic link loop"
    assert problems["linked-folder"].startswith("symbolic link to a folder")


def test_check_exit_codes_tell_a_leak_from_could_not_run(tmp_path, capsys):
    root = _tree(tmp_path / "set")
    records = data.index_folder(root).records
    dup = root / "neutrophil" / "copy.jpg"
    shutil.copy(records[-1].path, dup)
    records = data.index_folder(root).records
    for r in records:
        r.split = "test" if r.path == str(dup) else "train"
    leaky = tmp_path / "leaky.csv"
    write_manifest(records, leaky)
    code, out, _ = cli(["data", "check", str(leaky)], capsys)
    assert code == 1 and "straddle" in out
    garbage = tmp_path / "garbage.csv"
    garbage.write_bytes(b"path,label,sha256,width,height,split,source\n\x00a,b\xff\n")
    code, _, err = cli(["data", "check", str(garbage)], capsys)
    assert code == 2 and "Traceback" not in err and err.count("error:") == 1
    code, _, err = cli(["data", "check", str(tmp_path / "missing.csv")], capsys)
    assert code == 2 and "Traceback" not in err


@pytest.mark.parametrize("text", [b"\xff\xfe\x00garbage", b"path,label\n", b"a\x00b\n",
                                  b"path,label,sha256,width,height,split,source\nx,y,z,ten,1,,\n"])
def test_an_unreadable_manifest_is_a_manifest_error(tmp_path, text):
    path = tmp_path / "m.csv"
    path.write_bytes(text)
    with pytest.raises(ManifestError):
        read_manifest(path)
