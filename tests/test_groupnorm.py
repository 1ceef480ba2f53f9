"""GroupNorm models: built by swapping every BatchNorm, saved and reloaded, and converted to int8 TFLite."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from wbcedge.train.models import create_model  # noqa: E402
from wbcedge.train.models.groupnorm import _leaf_layers, groups_for  # noqa: E402


def kinds(model) -> dict[str, int]:
    counts: dict[str, int] = {}
    for layer in _leaf_layers(model):
        counts[type(layer).__name__] = counts.get(type(layer).__name__, 0) + 1
    return counts


@pytest.fixture(scope="module")
def pair():
    keras.utils.set_random_seed(0)
    bn = create_model("mobilenet_v2", input_size=32, alpha=0.35)
    gn = create_model("mobilenet_v2", input_size=32, alpha=0.35, norm="group")
    return bn, gn


def test_every_batchnorm_becomes_a_groupnorm(pair) -> None:
    bn, gn = pair
    assert "BatchNormalization" not in kinds(gn)
    assert kinds(gn)["GroupNormalization"] == kinds(bn)["BatchNormalization"] > 30
    assert {k: v for k, v in kinds(gn).items() if k != "GroupNormalization"} == \
        {k: v for k, v in kinds(bn).items() if k != "BatchNormalization"}
    assert groups_for(24) == 8 and groups_for(12) == 4 and groups_for(5) == 1


def test_a_groupnorm_image_does_not_depend_on_its_batch(pair) -> None:
    _, gn = pair
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.float32)
    alone = gn(x[:1], training=True)  # training mode: BatchNorm would use the batch's statistics
    together = gn(x, training=True)[:1]
    # dropout is random in training mode, so compare the features before the head instead
    features = keras.Model(gn.input, gn.get_layer("gap").output)
    np.testing.assert_allclose(features(x[:1], training=True), features(x, training=True)[:1], atol=1e-4)
    assert alone.shape == together.shape == (1, 5)


@pytest.mark.slow
def test_groupnorm_weights_round_trip_through_a_keras_file(pair, tmp_path) -> None:
    _, gn = pair
    path = tmp_path / "gn.keras"
    gn.save(path)
    again = create_model("mobilenet_v2", input_size=32, alpha=0.35, norm="group", weights=str(path))
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(gn.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-5)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(gn.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-5)


def test_a_groupnorm_model_warm_starts_from_a_batchnorm_checkpoint(pair, tmp_path) -> None:
    bn, _ = pair
    path = tmp_path / "bn.keras"
    bn.save(path)
    gn = create_model("mobilenet_v2", input_size=32, alpha=0.35, norm="group", weights=str(path))
    assert "BatchNormalization" not in kinds(gn)
    np.testing.assert_array_equal(gn.get_layer("dense64").get_weights()[0], bn.get_layer("dense64").get_weights()[0])
    np.testing.assert_array_equal(gn.get_layer("head64_gn").get_weights()[0], bn.get_layer("head64_bn").get_weights()[0])


@pytest.mark.slow
def test_groupnorm_model_converts_to_full_integer_tflite(pair, tmp_path) -> None:
    from wbcedge.device.runtime import Classifier
    from wbcedge.train.convert import to_tflite

    _, gn = pair
    rng = np.random.default_rng(2)
    calibration = rng.integers(0, 256, (16, 32, 32, 3)).astype(np.uint8)
    path = to_tflite(gn, tmp_path / "gn_int8.tflite", "int8", calibration)
    classifier = Classifier(path, threads=1)
    x = rng.integers(0, 256, (4, 32, 32, 3)).astype(np.uint8)
    probs = classifier.predict(x)
    assert probs.shape == (4, 5)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=0.05)
    np.testing.assert_allclose(probs, gn.predict(x.astype(np.float32), verbose=0), atol=0.1)


def test_batchnorm_reestimation_knows_a_groupnorm_model_has_nothing_to_reestimate(pair) -> None:
    from wbcedge.errors import InputDataError
    from wbcedge.train.bn_adapt import has_batchnorm, reestimate_batchnorm

    bn, gn = pair
    assert has_batchnorm(bn) and not has_batchnorm(gn)   # `wbcedge adapt` skips its step 1 for gn
    with pytest.raises(InputDataError, match="no BatchNormalization"):
        reestimate_batchnorm(gn, np.zeros((4, 32, 32, 3), np.uint8))


def test_group_late_swaps_only_the_last_stage_and_the_head(pair, tmp_path) -> None:
    bn = keras.saving.load_model(_saved(pair[0], tmp_path / "bn0.keras"))
    for layer in _leaf_layers(bn):   # statistics a fresh build cannot have, to see them carried over
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_variance.assign(np.random.default_rng(4).uniform(0.5, 2.0, layer.moving_variance.shape))
    path = _saved(bn, tmp_path / "bn.keras")
    late = create_model("mobilenet_v2", input_size=32, alpha=0.35, norm="group-late", weights=str(path))
    swapped = [layer for layer in _leaf_layers(late) if isinstance(layer, keras.layers.GroupNormalization)]
    kept = [layer for layer in _leaf_layers(late) if isinstance(layer, keras.layers.BatchNormalization)]
    assert swapped and kept and len(swapped) + len(kept) == kinds(bn)["BatchNormalization"]
    # at 32 px the last stage is 1x1: every GroupNorm is there or in the (2-D) head, every BatchNorm before it
    assert all(len(g.output.shape) == 2 or g.output.shape[1] == 1 for g in swapped)
    assert all(len(b.output.shape) == 4 and b.output.shape[1] > 1 for b in kept)
    # the BatchNorm layers it keeps keep the checkpoint's statistics, not fresh ones
    first_bn = {layer.name: layer for layer in _leaf_layers(bn)}[kept[0].name]
    np.testing.assert_allclose(kept[0].moving_variance.numpy(), first_bn.moving_variance.numpy())
    assert not np.allclose(first_bn.moving_variance.numpy(), 1.0)
    again_path = tmp_path / "late.keras"
    late.save(again_path)   # a mixed checkpoint loads as itself (it holds BatchNorm too)
    again = create_model("mobilenet_v2", input_size=32, alpha=0.35, norm="group-late", weights=str(again_path))
    x = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(late.predict(x, verbose=0), again.predict(x, verbose=0), atol=1e-5)


def _saved(model, path):
    model.save(path)
    return path
