"""Bundle security on the device: a changed byte is caught, an archive never writes outside its folder.

Pure device code (no TensorFlow): these run in the device-only install, on a copy of the
built-in bundle.
"""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from wbcedge.bundle import DEFAULT_BUNDLE, MANIFEST, BundleError, load_bundle, pack, unpack, verify_bundle
from wbcedge.cli import app


@pytest.fixture()
def bundle(tmp_path) -> Path:
    folder = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, folder)
    return folder


def evil_archive(path: Path, name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        payload = b"x"
        info = tarfile.TarInfo(name)
        info.type, info.linkname = kind, linkname
        info.size = len(payload) if kind == tarfile.REGTYPE else 0
        tar.addfile(info, io.BytesIO(payload) if kind == tarfile.REGTYPE else None)
    return path


def test_the_built_in_bundle_verifies():
    assert verify_bundle(DEFAULT_BUNDLE) == []
    b = load_bundle()
    assert b.deployable and b.model_entry()["file"] == json.loads((DEFAULT_BUNDLE / MANIFEST).read_text())["default_model"]


def test_verify_catches_a_tampered_model_file(bundle):
    model = bundle / "model_int8.tflite"
    raw = bytearray(model.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    model.write_bytes(bytes(raw))
    problems = verify_bundle(bundle)
    assert len(problems) == 1 and "model_int8.tflite" in problems[0] and "sha256" in problems[0]
    with pytest.raises(BundleError, match="failed verification"):
        load_bundle(bundle)
    res = CliRunner().invoke(app, ["bundle", "verify", str(bundle)])
    assert res.exit_code == 1 and "model_int8.tflite" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(app, ["run", "--bundle", str(bundle)])
    assert res.exit_code == 4 and "does not match its sha256" in res.output


def test_verify_catches_added_missing_and_relabelled_files(bundle):
    (bundle / "extra.onnx").write_bytes(b"added later")
    (bundle / "model_fp32.onnx").unlink()
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["format_version"] = 99
    (bundle / MANIFEST).write_text(json.dumps(manifest))
    problems = "\n".join(verify_bundle(bundle))
    assert "extra.onnx is not listed" in problems
    assert "model_fp32.onnx is listed in the manifest but missing" in problems
    assert "format version 99" in problems


def test_archive_round_trip(bundle, tmp_path):
    archive = pack(bundle, tmp_path / "b.tar.gz")
    assert verify_bundle(unpack(archive, tmp_path / "unpacked")) == []
    res = CliRunner().invoke(app, ["bundle", "unpack", str(archive), str(tmp_path / "cli")])
    assert res.exit_code == 0 and verify_bundle(tmp_path / "cli") == []
    assert load_bundle(archive).classes == load_bundle(bundle).classes  # an archive loads directly too


@pytest.mark.parametrize("name, kind, linkname, words", [
    ("../outside.txt", tarfile.REGTYPE, "", "outside"),
    ("/tmp/absolute-wbcedge-test.txt", tarfile.REGTYPE, "", "outside"),
    ("link", tarfile.SYMTYPE, "/etc/passwd", "link or special file"),
    ("hard", tarfile.LNKTYPE, "../outside.txt", "link or special file"),
])
def test_unsafe_archives_are_refused_and_write_nothing(tmp_path, name, kind, linkname, words):
    evil = evil_archive(tmp_path / "evil.tar.gz", name, kind, linkname)
    with pytest.raises(BundleError, match=words):
        unpack(evil, tmp_path / "dest")
    assert not (tmp_path / "outside.txt").exists() and not (tmp_path / "dest").exists()  # nothing left behind
    res = CliRunner().invoke(app, ["bundle", "unpack", str(evil), str(tmp_path / "dest2")])
    assert res.exit_code == 4 and words in res.output and "Traceback" not in res.output
