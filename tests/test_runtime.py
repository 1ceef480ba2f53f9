"""The runtime classifier's quantise / dequantise paths, on the built-in bundle's real int8 and fp32 files.

No TensorFlow: ai-edge-litert and onnxruntime only, as on the device.
"""

from __future__ import annotations

import numpy as np
import pytest

from wbcedge.bundle import DEFAULT_BUNDLE, load_bundle
from wbcedge.data import SAMPLES_DIR
from wbcedge.device.runtime import Classifier
from wbcedge.errors import BundleFormatError, ModelLoadError
from wbcedge.preprocess import load_inputs


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Two real PBC crops per class, preprocessed with the bundle's own spec."""
    paths = [p for c in sorted(SAMPLES_DIR.iterdir()) if c.is_dir() for p in sorted(c.glob("*.jpg"))[:2]]
    return load_inputs(paths, load_bundle().spec, workers=1)


@pytest.fixture(scope="module")
def int8() -> Classifier:
    return Classifier(DEFAULT_BUNDLE / "model_int8.tflite", threads=1)


def test_int8_tflite_takes_camera_pixels_as_they_are(int8, crops):
    # The Rescaling layer is inside the model, so the uint8 input has scale 1, zero point 0:
    # the batch goes in untouched (no copy, no rounding).
    assert int8.input_dtype == np.uint8 and tuple(int8._in_quant) == (1.0, 0)
    assert int8._quantize_input(crops) is crops


def test_int8_output_is_dequantised_with_the_files_own_scale(int8, crops):
    out_index, (scale, zero) = int8._outputs[0]  # the probabilities come first, the features (if any) after
    assert 0 < scale < 0.01  # 1/256 for a uint8 softmax
    interp = int8._interpreter(len(crops))
    interp.set_tensor(int8._in_index, crops)
    interp.invoke()
    raw = interp.get_tensor(out_index)
    assert raw.dtype in (np.uint8, np.int8)
    probs = int8.predict(crops)
    assert probs.dtype == np.float32 and probs.shape == (len(crops), 5)
    np.testing.assert_array_equal(probs, (raw.astype(np.float32) - zero) * scale)
    assert np.all(probs >= 0) and np.all(probs <= 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=5 * scale * probs.shape[1])


def test_int8_input_quantisation_rounds_and_clips(int8):
    """The int8-input path (a file exported with int8 activations): q = round(x / scale + zero), clipped."""
    x = np.array([[[[0, 1, 2], [127, 128, 255]]]], np.uint8)
    int8.input_dtype, int8._in_quant = np.dtype(np.int8), (1.0, -128)
    try:
        q = int8._quantize_input(x)
        assert q.dtype == np.int8
        np.testing.assert_array_equal(q.astype(int) + 128, x.astype(int))  # exact: scale 1, zero -128
        int8._in_quant = (0.5, 0)
        q = int8._quantize_input(x)
        assert q.min() >= -128 and q.max() == 127  # 2 * 255 = 510 clips at 127
        assert q[0, 0, 0, 1] == 2 and q[0, 0, 1, 0] == 127
        int8.input_dtype, int8._in_quant = np.dtype(np.uint8), (2.0, 10)
        q = int8._quantize_input(x)
        assert q.dtype == np.uint8
        np.testing.assert_array_equal(q, np.clip(np.round(x / 2.0 + 10), 0, 255))
    finally:
        int8.input_dtype, int8._in_quant = np.dtype(np.uint8), (1.0, 0)


def test_int8_files_agree_with_the_float_file(int8, crops):
    fp32 = Classifier(DEFAULT_BUNDLE / "model_fp32.tflite", threads=1)
    assert fp32.input_dtype == np.float32
    ref = fp32.predict(crops)
    for clf in (int8, Classifier(DEFAULT_BUNDLE / "model_int8.onnx", threads=1)):
        probs = clf.predict_many(crops, batch_size=4)
        assert probs.shape == ref.shape
        assert (probs.argmax(1) == ref.argmax(1)).mean() >= 0.9, clf.path.name
        assert np.abs(probs - ref).max() < 0.25, clf.path.name


def test_batches_of_any_size_give_the_same_answer(int8, crops):
    whole = int8.predict(crops)
    one_by_one = np.concatenate([int8.predict(c) for c in crops])  # 3-D input: a batch of one
    np.testing.assert_array_equal(whole, one_by_one)
    assert int8.predict(crops[:0]).shape == (0, 0)


def test_wrong_input_size_and_bad_files_are_clear_errors(int8, crops, tmp_path):
    with pytest.raises(ValueError, match="takes 160px inputs, got 80px"):
        int8.predict(crops[:, :80, :80])
    with pytest.raises(BundleFormatError, match="model file not found"):
        Classifier(tmp_path / "gone.tflite")
    (tmp_path / "model.pt").write_bytes(b"x")
    with pytest.raises(BundleFormatError, match="unknown model format"):
        Classifier(tmp_path / "model.pt")
    for name in ("bad.tflite", "bad.onnx"):
        (tmp_path / name).write_bytes(b"not a model at all")
        with pytest.raises(ModelLoadError, match="cannot load this model file"):
            Classifier(tmp_path / name)
