"""The shift check's reference for a site with few labelled validation cells (what `wbcedge adapt`
exports): unlabelled site cells join them for the thresholds; the temperature needs labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from wbcedge.data.index import index_folder  # noqa: E402
from wbcedge.labels import CLASSES  # noqa: E402
from wbcedge.preprocess import PreprocessSpec, load_inputs  # noqa: E402
from wbcedge.train.shift_reference import MIN_VAL_IMAGES, build_reference  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "wbcedge" / "samples" / "pbc"


@pytest.fixture(scope="module")
def site():
    import keras

    from wbcedge.train.convert import with_feature_output
    from wbcedge.train.models import create_model

    keras.utils.set_random_seed(0)
    model, width = with_feature_output(create_model("mobilenet_v2", input_size=32, alpha=0.35))
    assert width
    spec = PreprocessSpec(input_size=32)
    records = sorted(index_folder(SAMPLES).records, key=lambda r: r.path)
    val = records[::3][:8]                       # a dozen or fewer labelled validation cells
    train = [r for r in records if r not in val]
    for r in train:
        r.split = "train"
    for r in val:
        r.split = "val"
    unlabelled = load_inputs([r.path for r in train], spec)   # stand-ins for the site's unlabelled cells
    rng = np.random.default_rng(0)
    unlabelled = np.concatenate([unlabelled, unlabelled[:, ::-1], np.rot90(unlabelled, 1, axes=(1, 2))])
    return model, spec, train + val, unlabelled[rng.permutation(len(unlabelled))]


def test_too_few_validation_cells_and_no_unlabelled_ones_turn_the_check_off(site):
    model, spec, records, _ = site
    base, _, calibration, shift = build_reference(model, records, spec, list(CLASSES), 100, 0, progress=lambda m: None)
    assert base is None and shift["reference"] is None and "need 20 together" in shift["note"]
    assert calibration["temperature"] == 1.0


def test_unlabelled_site_cells_give_the_check_its_thresholds_but_not_a_temperature(site):
    model, spec, records, unlabelled = site
    n_val = sum(r.split == "val" for r in records)
    assert n_val < MIN_VAL_IMAGES <= n_val + len(unlabelled)
    base, x_thresholds, calibration, shift = build_reference(model, records, spec, list(CLASSES), 100, 0,
                                                             progress=lambda m: None, unlabelled=unlabelled)
    assert base is not None and shift["reference"] and shift["unlabelled_images"] == len(unlabelled)
    assert len(x_thresholds) == n_val + len(unlabelled)
    assert calibration["temperature"] == 1.0 and calibration["fitted_on"] is None
    assert f"{n_val} labelled validation images" in calibration["note"]


def test_a_run_that_normalised_after_augmenting_gets_a_reference_made_the_same_way(site):
    """With stain normalisation last (as the device does it), the colour-augmented reference crops
    are shifted, then normalised: the tint is taken out again, so their colours spread less."""
    from dataclasses import replace

    from wbcedge.preprocess import read_image, stain_reference_of

    model, spec, records, unlabelled = site
    spec = replace(spec, stain_reference=stain_reference_of([read_image(r.path) for r in records]))
    tint = {"white_balance": 0.4, "tint": 0.2}
    spreads = {}
    for after in (False, True):
        base, *_ = build_reference(model, records, spec, list(CLASSES), 100, 0, augment=tint,
                                   progress=lambda m: None, unlabelled=unlabelled, stain_after_augment=after)
        spreads[after] = float(np.linalg.norm(np.linalg.inv(base.colour_whiten)))   # ~ the colours' spread
    assert spreads[True] < spreads[False] / 2
