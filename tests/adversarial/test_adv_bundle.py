"""A bundle is data, never a path to elsewhere: schema, names, class list, model bytes, archive limits."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path

import pytest
from adv_helpers import cli

from wbcedge import bundle as bundle_mod
from wbcedge.bundle import BundleError, load_bundle, pack, unpack, unpack_folder, verify_bundle
from wbcedge.errors import BundleFormatError
from wbcedge.provenance import file_sha256


def _edit(folder: Path, change) -> None:
    """Apply `change(manifest)` and rehash every listed file that exists, as a careful forger would."""
    path = folder / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    for name in list(manifest.get("files", {})):
        target = folder / name
        if target.is_file():
            manifest["files"][name] = file_sha256(target)
    path.write_text(json.dumps(manifest))


BROKEN_MANIFESTS = {
    "not json": "{ this is not json",
    "a list": "[1, 2, 3]",
    "missing keys": json.dumps({"format": "wbcedge-bundle", "format_version": 1}),
    "deep nesting": "[" * 100_000 + "]" * 100_000,
}


@pytest.mark.parametrize("what", sorted(BROKEN_MANIFESTS))
@pytest.mark.parametrize("verb", [["bundle", "verify"], ["bundle", "inspect"], ["run", "--bundle"],
                                  ["bench", "--backends", "tflite"]])
def test_a_malformed_manifest_is_one_error_line_never_a_traceback(bundle_copy, tmp_path, capsys, what, verb):
    (bundle_copy / "manifest.json").write_text(BROKEN_MANIFESTS[what])
    args = [*verb, str(bundle_copy)] if verb[0] != "bench" else ["bench", str(bundle_copy), *verb[1:]]
    if verb[0] == "run":
        args += ["--out", str(tmp_path / "s")]
    code, out, err = cli(args, capsys)
    assert code == 4, (out, err)
    assert "Traceback" not in err and err.count("error:") == 1


@pytest.mark.parametrize("change, words", [
    (lambda m: m["preprocess"].update(input_size=5000), "input_size"),
    (lambda m: m["preprocess"].update(input_size=8), "input_size"),
    (lambda m: m["preprocess"].update(cell_fraction=1.2), "cell_fraction"),
    (lambda m: m["preprocess"].update(cell_fraction=0), "cell_fraction"),
    (lambda m: m["preprocess"].update(crop_um=-3), "crop_um"),
    (lambda m: m["preprocess"].update(interpolation="lanczos9"), "interpolation"),
    (lambda m: m["preprocess"].update(color_order="RBG"), "color_order"),
    (lambda m: m.update(confidence_threshold=1.5), "confidence_threshold"),
    (lambda m: m.update(confidence_threshold="high"), "confidence_threshold"),
    (lambda m: m.update(classes="neutrophil"), "classes"),
    (lambda m: m["models"][0].update(backend="tensorrt"), "backend"),
    (lambda m: m.pop("preprocess"), "preprocess"),
])
def test_out_of_range_or_mistyped_manifest_values_are_refused_before_loading(bundle_copy, change, words):
    _edit(bundle_copy, change)
    with pytest.raises(BundleFormatError, match=words):
        load_bundle(bundle_copy, verify=False)
    assert words in " ".join(verify_bundle(bundle_copy))


def test_unknown_keys_are_allowed_and_kept_known_ones_still_checked(bundle_copy):
    _edit(bundle_copy, lambda m: (m.update(reference_stats={"mean": [1, 2]}, parent_bundle_sha256="ab" * 32),
                                  m["models"][0].update(latency_ms=3.2)))
    b = load_bundle(bundle_copy)
    assert b.manifest["reference_stats"] == {"mean": [1, 2]} and b.models[0]["latency_ms"] == 3.2


def _point_model_outside(bundle: Path, name: str) -> None:
    def change(m):
        m["models"][1]["file"] = name
        m["files"][name] = "0" * 64
        m["default_model"] = name
    _edit(bundle, change)


@pytest.mark.parametrize("name", ["../outside.tflite", "sub/../../outside.tflite"])
def test_a_model_named_outside_the_bundle_is_refused_everywhere(bundle_copy, tmp_path, capsys, name):
    shutil.copy(bundle_copy / "model_int8.tflite", tmp_path / "outside.tflite")
    _point_model_outside(bundle_copy, name)
    for args in (["bundle", "verify", str(bundle_copy)], ["bundle", "inspect", str(bundle_copy)],
                 ["run", "--bundle", str(bundle_copy), "--out", str(tmp_path / "s")],
                 ["bench", str(bundle_copy), "--backends", "tflite"]):
        code, out, err = cli(args, capsys)
        assert code == 4, (args, out, err)
        assert "not a plain relative name" in err and "Traceback" not in err


def test_an_absolute_model_path_is_refused(bundle_copy, tmp_path):
    shutil.copy(bundle_copy / "model_int8.tflite", tmp_path / "outside.tflite")
    _point_model_outside(bundle_copy, str(tmp_path / "outside.tflite"))
    with pytest.raises(BundleError, match="not a plain relative name"):
        load_bundle(bundle_copy, verify=False)


def test_a_symlink_out_of_the_bundle_is_refused_even_with_matching_bytes(bundle_copy, tmp_path, capsys):
    outside = tmp_path / "elsewhere.tflite"
    shutil.move(bundle_copy / "model_int8.tflite", outside)
    os.symlink(outside, bundle_copy / "model_int8.tflite")  # same bytes, same sha256
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy, verify=False)
    code, _, err = cli(["bundle", "verify", str(bundle_copy)], capsys)
    assert code == 4 and "outside the bundle" in err


@pytest.mark.parametrize("n", [4, 6])
def test_a_class_list_that_does_not_fit_the_model_is_refused_at_load(bundle_copy, n):
    from wbcedge.device.pipeline import CellPipeline

    names = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil", "blast"][:n]
    (bundle_copy / "labels.json").write_text(json.dumps(names))
    _edit(bundle_copy, lambda m: m.update(classes=names))
    b = load_bundle(bundle_copy)
    with pytest.raises(BundleError, match=f"outputs 5 class scores but the bundle names {n} classes"):
        CellPipeline(b)


def test_labels_json_and_the_manifest_cannot_disagree(bundle_copy):
    (bundle_copy / "labels.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    _edit(bundle_copy, lambda m: None)
    assert any("the class list must agree" in p for p in verify_bundle(bundle_copy))


@pytest.mark.parametrize("target, source, declared", [("model_int8.tflite", "model_int8.onnx", "TFLite"),
                                                      ("model_int8.onnx", "model_int8.tflite", "ONNX")])
def test_model_bytes_that_are_not_the_declared_format_are_named(bundle_copy, target, source, declared):
    from wbcedge.device.runtime import Classifier

    shutil.copy(bundle_copy / source, bundle_copy / target)
    _edit(bundle_copy, lambda m: None)
    problems = verify_bundle(bundle_copy)
    assert any(target in p and f"declared {declared}" in p for p in problems)
    with pytest.raises(BundleFormatError, match=f"{target}: cannot load this model file: it is declared {declared}"):
        Classifier(bundle_copy / target)


# ---------------------------------------------------------------- archives

def _tar_gz(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".unpacking-") or p.name == "dest")


def test_an_archive_member_claiming_gigabytes_is_refused_before_writing(tmp_path):
    info = tarfile.TarInfo("model_int8.tflite")
    info.size = 4 << 30  # the header claims 4 GiB; the data is never there
    import gzip

    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096))
    with pytest.raises(BundleError, match="byte limit per file"):
        unpack(archive, tmp_path / "dest")
    assert _leftovers(tmp_path) == []


def test_an_archive_over_the_total_size_is_refused_and_nothing_is_left(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_UNPACKED_BYTES", 10_000)
    archive = _tar_gz(tmp_path / "big.tar.gz", {f"f{i}.bin": b"\0" * 4000 for i in range(5)})
    with pytest.raises(BundleError, match="unpacks to more than 10,000 bytes"):
        unpack(archive, tmp_path / "dest")
    assert _leftovers(tmp_path) == []


def test_an_archive_with_too_many_members_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "MAX_ARCHIVE_MEMBERS", 3)
    archive = _tar_gz(tmp_path / "many.tar.gz", {f"f{i}.bin": b"x" for i in range(10)})
    with pytest.raises(BundleError, match="more than 3 members"):
        unpack(archive, tmp_path / "dest")
    assert _leftovers(tmp_path) == []


def test_a_traversing_member_leaves_nothing_even_after_good_members(tmp_path):
    archive = _tar_gz(tmp_path / "evil.tar.gz", {"labels.json": b"[]", "../../evil.sh": b"echo owned"})
    with pytest.raises(BundleError, match="outside the destination"):
        unpack(archive, tmp_path / "dest")
    assert _leftovers(tmp_path) == [] and not (tmp_path.parent / "evil.sh").exists()


def test_a_good_archive_unpacks_and_verifies(bundle_copy, tmp_path):
    archive = pack(bundle_copy, tmp_path / "b.tar.gz")
    assert verify_bundle(unpack(archive, tmp_path / "dest")) == []


def test_an_archive_on_read_only_media_is_unpacked_into_the_cache(bundle_copy, tmp_path, monkeypatch):
    media = tmp_path / "media"
    media.mkdir()
    archive = pack(bundle_copy, media / "b.tar.gz")
    cache = tmp_path / "cache"
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    real_access = os.access
    # Tests run as root here, where chmod cannot make a folder read-only: the media folder says it is.
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == media else real_access(p, mode))
    assert cache in unpack_folder(archive).parents
    b = load_bundle(archive)
    assert cache in b.path.parents and sorted(p.name for p in media.iterdir()) == ["b.tar.gz"]


def test_manifest_text_that_looks_like_console_markup_is_printed_literally(bundle_copy, capsys):
    names = ["[/]", "[bold]eo", "lymph[/bold]", "mono", "neutro"]
    (bundle_copy / "labels.json").write_text(json.dumps(names))
    _edit(bundle_copy, lambda m: m.update(classes=names, source_run="[/red]"))
    code, out, err = cli(["bundle", "inspect", str(bundle_copy)], capsys)
    assert code == 0, err
    assert "[/], [bold]eo, lymph[/bold]" in out and "[/red]" in out
