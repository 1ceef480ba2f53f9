"""Each of the paper's five models builds with the paper's head and trains a step on CPU."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")
pytestmark = pytest.mark.train

from wbcedge.train.models import MODEL_NAMES, create_model  # noqa: E402
from wbcedge.train.models.applications import WeightsUnavailableError, backbone_of  # noqa: E402

# Smallest input each family accepts, to keep the step fast.
SIZES = {"residual_cnn": 32, "mobilenet_v2": 32, "inception_v3": 75, "xception": 71, "resnet50": 32}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_model_builds_and_trains_a_step(name):
    model = create_model(name, input_size=SIZES[name], alpha=0.35 if name == "mobilenet_v2" else 1.0)
    assert model.output_shape == (None, 5)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    backbone = backbone_of(model)
    if backbone is not None:
        bns += [l for l in backbone.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(l.momentum == 0.9 for l in bns)  # docs/known-traps.md, trap 2
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, SIZES[name], SIZES[name], 3)).astype("float32")
    y = np.array([0, 1, 2, 3])
    # One eager training step (no graph tracing: the big backbones take a minute to trace).
    import tensorflow as tf

    optimizer = keras.optimizers.Adam(1e-3)
    before = [w.copy() for w in model.get_weights()]
    with tf.GradientTape() as tape:
        loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(y, model(x, training=True)))
    optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
    assert np.isfinite(float(loss))
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    probs = keras.ops.convert_to_numpy(model(x, training=False))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-4)


def test_paper_head_parameter_counts_match_the_paper_tables():
    # Tables III and IV give the totals (224 px; convolution weights do not depend on the input size).
    assert create_model("inception_v3", input_size=75).count_params() == 21_960_421
    assert create_model("xception", input_size=71).count_params() == 21_019_117


def test_resnet50_input_scaling_is_caffe_inside_the_model():
    model = create_model("resnet50", input_size=32)
    conv = model.get_layer("caffe_bgr_mean")
    pixel = np.array([[[[10.0, 20.0, 30.0]]]], np.float32)  # R, G, B
    out = keras.ops.convert_to_numpy(conv(pixel))[0, 0, 0]
    np.testing.assert_allclose(out, [30 - 103.939, 20 - 116.779, 10 - 123.68], atol=1e-4)
    assert not conv.trainable


def test_weights_from_a_path_round_trip(tmp_path):
    a = create_model("residual_cnn", input_size=32)
    path = tmp_path / "w.weights.h5"
    a.save_weights(path)
    b = create_model("residual_cnn", input_size=32, weights=str(path))
    x = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), atol=1e-6)


def test_imagenet_weights_that_cannot_be_had_fail_clearly_or_fall_back():
    """Keras has no ImageNet weights for MobileNetV2 at alpha 0.3 (with or without a network): the real
    loading code must say what to do, and with weights_fallback train from scratch with a warning."""
    with pytest.raises(WeightsUnavailableError, match="--weights none") as info:
        create_model("mobilenet_v2", input_size=96, alpha=0.3, weights="imagenet")
    assert "mobilenet_v2" in str(info.value) and "--weights-fallback" in str(info.value)
    with pytest.warns(UserWarning, match="--weights-fallback was given"):
        fallback = create_model("mobilenet_v2", input_size=96, alpha=0.3, weights="imagenet", weights_fallback=True)
    assert fallback.output_shape == (None, 5)


def test_unknown_model_and_too_small_input_are_clear_errors():
    with pytest.raises(ValueError, match="choose one of"):
        create_model("vgg16")
    with pytest.raises(ValueError, match="at least 75px"):
        create_model("inception_v3", input_size=64)
