"""Property-based fuzzing of every parser that reads a file a user or another machine wrote.

Arbitrary JSON or text in: either a valid object or a `WbcedgeError` (the CLI turns it
into one `error:` line), never another exception.
"""

from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbcedge.bundle import DEFAULT_BUNDLE
from wbcedge.bundle_schema import BundleManifest, validate_manifest
from wbcedge.data.manifest import Record, parse_manifest
from wbcedge.device.capture import CameraProfile
from wbcedge.device.differential import load_reference
from wbcedge.errors import WbcedgeError
from wbcedge.preprocess import PreprocessSpec

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                         HealthCheck.function_scoped_fixture])
MANIFEST = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-10**30, max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)


@st.composite
def mutated_manifest(draw):
    """The real manifest with one to three keys (at any depth) replaced, deleted or added."""
    m = copy.deepcopy(MANIFEST)
    for _ in range(draw(st.integers(1, 3))):
        node = m
        path_keys = draw(st.sampled_from([[], ["preprocess"], ["models", 0], ["models", 1], ["files"]]))
        for k in path_keys:
            try:
                node = node[k]
            except (KeyError, IndexError, TypeError):
                break
        if not isinstance(node, dict):
            continue
        keys = list(node) if isinstance(node, dict) else []
        key = draw(st.sampled_from(keys + ["extra_key"])) if keys else "extra_key"
        action = draw(st.sampled_from(["replace", "delete"]))
        if action == "delete" and key in node:
            del node[key]
        else:
            node[key] = draw(json_values)
    return m


@FUZZ
@given(mutated_manifest())
def test_a_mutated_bundle_manifest_validates_or_is_a_bundle_error(manifest):
    try:
        parsed = validate_manifest(manifest)
    except WbcedgeError:
        return
    assert isinstance(parsed, BundleManifest)
    spec = PreprocessSpec.from_dict(parsed.preprocess)
    assert 16 <= spec.input_size <= 1024 and 0 < spec.cell_fraction < 1
    assert 0.0 <= parsed.confidence_threshold <= 1.0


@FUZZ
@given(json_values)
def test_any_json_as_a_bundle_manifest_is_refused_cleanly(value):
    with pytest.raises(WbcedgeError):
        validate_manifest(value)


@FUZZ
@given(st.dictionaries(st.sampled_from(["input_size", "color_order", "input_dtype", "interpolation",
                                        "cell_fraction", "crop_um", "other"]), json_values, max_size=7)
       | json_values)
def test_any_json_as_a_preprocessing_spec_gives_a_spec_or_a_wbcedge_error(value):
    try:
        spec = PreprocessSpec.from_dict(value)
    except WbcedgeError:
        return
    assert 16 <= spec.input_size <= 1024 and 0 < spec.cell_fraction < 1


@FUZZ
@given(st.text(max_size=300))
def test_any_text_as_a_data_manifest_gives_records_or_a_wbcedge_error(text):
    try:
        records = parse_manifest(io.StringIO(text, newline=""), Path("/data"))
    except WbcedgeError:
        return
    assert all(isinstance(r, Record) for r in records)


@FUZZ
@given(st.lists(st.lists(st.text(max_size=8), max_size=8), max_size=4))
def test_manifest_rows_with_any_cells_give_records_or_a_wbcedge_error(rows):
    header = "path,label,sha256,width,height,split,source\n"
    text = header + "".join(",".join(r) + "\n" for r in rows)
    try:
        parse_manifest(io.StringIO(text, newline=""), Path("/data"))
    except WbcedgeError:
        pass


@FUZZ
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")))
def test_any_text_as_a_camera_profile_gives_a_profile_or_a_wbcedge_error(tmp_path, text):
    path = tmp_path / "profile.toml"
    path.write_text(text, encoding="utf-8", errors="surrogateescape")
    try:
        CameraProfile.load(path)
    except WbcedgeError:
        pass


toml_scalars = st.sampled_from(["1", "0", "-1", "1.5", "nan", "inf", "-inf", "true", "\"x\"", "[1, 2]",
                                "[1.9, 1.6]", "[1, \"a\"]", "{ r = 1, b = 2 }", "{ r = 1, q = 2 }", "1e400",
                                "99999999999999999999", "[]", "\"\""])


@FUZZ
@given(st.dictionaries(st.sampled_from(["name", "width", "height", "fps", "exposure_us", "analogue_gain",
                                        "awb_gains", "um_per_px", "blur_threshold", "bogus"]),
                       toml_scalars, max_size=6))
def test_camera_profile_values_of_any_type_give_a_profile_or_a_wbcedge_error(tmp_path, values):
    path = tmp_path / "profile.toml"
    path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()), encoding="utf-8")
    try:
        profile = CameraProfile.load(path)
    except WbcedgeError:
        return
    assert profile.width > 0 and profile.fps > 0


@FUZZ
@given(st.dictionaries(st.sampled_from(["neutrophil", "EOS", "lymph", "monocyte", "basophil", "name", "platelet"]),
                       toml_scalars, max_size=5), st.booleans())
def test_reference_ranges_in_toml_or_json_give_ranges_or_a_wbcedge_error(tmp_path, values, as_json):
    if as_json:
        path = tmp_path / "ref.json"
        path.write_text("{" + ", ".join(f'"{k}": {v}' for k, v in values.items()) + "}", encoding="utf-8")
    else:
        path = tmp_path / "ref.toml"
        path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()), encoding="utf-8")
    try:
        ranges = load_reference(path)
    except WbcedgeError:
        return
    assert all(0 <= lo <= hi <= 100 for lo, hi in ranges.values())


@FUZZ
@given(st.text(max_size=200) | json_values.map(json.dumps))
def test_any_text_as_manifest_json_or_preprocess_json_is_a_wbcedge_error(tmp_path, text):
    from wbcedge.bundle import load_bundle

    (tmp_path / "manifest.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    (tmp_path / "preprocess.json").write_text(text, encoding="utf-8", errors="surrogateescape")
    with pytest.raises(WbcedgeError):
        load_bundle(tmp_path, verify=False)
    try:
        PreprocessSpec.load(tmp_path)
    except WbcedgeError:
        pass
