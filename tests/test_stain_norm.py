"""Reinhard stain normalisation in the preprocessing spec (device side: OpenCV and NumPy only)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from wbcedge.errors import InputDataError
from wbcedge.preprocess import PreprocessSpec, reinhard, stain_reference_of, to_model_input


def smear(tint=(0, 0, 0), seed=0) -> np.ndarray:
    """A violet disc on a pink background, with a tint added (BGR uint8)."""
    rng = np.random.default_rng(seed)
    img = np.full((96, 96, 3), (200, 205, 235), np.float32)
    cv2.circle(img, (48, 44), 18, (140, 50, 90), -1)
    img += np.asarray(tint, np.float32) + rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def lab_stats(bgr):
    lab = cv2.cvtColor(bgr.astype(np.float32) / 255, cv2.COLOR_BGR2LAB).reshape(-1, 3)
    return lab.mean(0), lab.std(0)


def test_reinhard_moves_a_tinted_crop_to_the_reference() -> None:
    reference = stain_reference_of([smear(seed=s) for s in range(3)])
    tinted = smear(tint=(40, -20, -30))
    out = reinhard(tinted, reference)
    mean, std = lab_stats(out)
    np.testing.assert_allclose(mean, reference[:3], atol=1.5)
    np.testing.assert_allclose(std, reference[3:], rtol=0.1)
    assert np.abs(out.astype(int) - smear().astype(int)).mean() < np.abs(tinted.astype(int) - smear().astype(int)).mean() / 2


def test_reinhard_is_the_textbook_per_channel_transfer_on_real_crops() -> None:
    """`reinhard` does its affine step with cv2.transform for speed; on the committed PBC and BCCD
    sample crops it must give what the plain formula gives, up to float rounding (one grey level)."""
    samples = Path(__file__).resolve().parent.parent / "wbcedge" / "samples"
    paths = sorted(samples.rglob("*.jpg"))
    assert len(paths) >= 20
    reference = (78.8421, 11.3642, 7.3558, 15.8569, 9.4992, 14.2452)
    ref = np.asarray(reference, np.float32)
    differing = total = 0
    for path in paths:
        crop = cv2.resize(cv2.imread(str(path)), (160, 160), interpolation=cv2.INTER_AREA)
        lab = cv2.cvtColor(crop.astype(np.float32) / 255, cv2.COLOR_BGR2LAB)
        mean, std = lab.reshape(-1, 3).mean(0), lab.reshape(-1, 3).std(0)
        lab = (lab - mean) / std * ref[3:] + ref[:3]
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        plain = np.round(np.clip(cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2BGR), 0, 1) * 255).astype(int)
        diff = np.abs(reinhard(crop, reference).astype(int) - plain)
        assert diff.max() <= 1, path
        differing, total = differing + int((diff > 0).sum()), total + diff.size
    assert differing / total < 0.01   # rounding: the statistics in float32 here, in double in OpenCV


def test_an_image_normalised_to_its_own_reference_stays_nearly_the_same() -> None:
    img = smear()
    assert np.abs(reinhard(img, stain_reference_of([img])).astype(int) - img.astype(int)).mean() < 1.5


def test_the_reference_travels_in_the_spec_and_is_applied_by_to_model_input(tmp_path) -> None:
    reference = stain_reference_of([smear()])
    spec = PreprocessSpec(input_size=32, stain_reference=reference)
    spec.save(tmp_path)
    again = PreprocessSpec.load(tmp_path)
    assert again == spec and isinstance(again.stain_reference, tuple)
    assert json.loads((tmp_path / "preprocess.json").read_text())["stain_reference"] == list(reference)
    tinted = smear(tint=(40, -20, -30))
    plain = to_model_input(tinted, PreprocessSpec(input_size=32)).astype(int)
    normed = to_model_input(tinted, spec).astype(int)
    target = to_model_input(smear(), PreprocessSpec(input_size=32)).astype(int)
    assert np.abs(normed - target).mean() < np.abs(plain - target).mean() / 2
    assert PreprocessSpec(input_size=32).stain_reference is None  # off unless a bundle carries one


@pytest.mark.parametrize("bad", [(1.0, 2.0), (50, 0, 0, 10, 0, 5)])
def test_a_malformed_reference_is_refused(bad) -> None:
    with pytest.raises(InputDataError, match="stain_reference"):
        PreprocessSpec(stain_reference=bad)


def test_normalising_model_inputs_afterwards_is_what_to_model_input_does() -> None:
    from dataclasses import replace

    from wbcedge.preprocess import stain_normalise_inputs

    spec = PreprocessSpec(input_size=32, stain_reference=stain_reference_of([smear()]))
    crops = [smear(tint=(40, -20, -30)), smear(tint=(-30, 10, 25), seed=1)]
    raw = np.stack([to_model_input(c, replace(spec, stain_reference=None)) for c in crops])
    np.testing.assert_array_equal(stain_normalise_inputs(raw, spec), np.stack([to_model_input(c, spec) for c in crops]))
    np.testing.assert_array_equal(stain_normalise_inputs(raw, replace(spec, stain_reference=None)), raw)
