"""Model converters (training box only): Keras -> TFLite and ONNX, float and int8.

Converter paths chosen from the known traps (docs/known-traps.md):
- TFLite from `from_keras_model` (from_concrete_functions with Keras 3 does not
  freeze the weights, trap 3). Full-integer int8 keeps the input Rescaling in the
  model, so the uint8 input has scale 1, zero point 0 (trap 4).
- ONNX through tf2onnx with an explicit input signature (trap 5, opset <= 18),
  then onnxruntime static quantization: `quant_pre_process` first, QDQ format,
  per-channel int8 weights (trap 6).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ONNX_OPSET = 17
ACTIVATION_TYPES = ("uint8", "int8")


def with_feature_output(model):
    """The model with a second output, the penultimate features (the input of its last Dense layer).

    Returns (model, feature width); (model, None) when the last layer is not a Dense layer or the
    features are not wider than the classes (the device tells the outputs apart by width).
    """
    import keras

    last = model.layers[-1]
    if not isinstance(last, keras.layers.Dense) or len(model.outputs) != 1:
        return model, None
    features = last.input
    width = int(features.shape[-1])
    if width <= int(model.outputs[0].shape[-1]):
        return model, None
    return keras.Model(model.inputs, [model.outputs[0], features], name=f"{model.name}_with_features"), width


def to_tflite(model, out: Path, precision: str = "fp32", calibration: np.ndarray | None = None) -> Path:
    """Write a .tflite file: precision fp32, fp16 (weights) or int8 (full integer, uint8 in/out)."""
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif precision == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 TFLite needs calibration images")

        def representative():
            for image in calibration:
                yield [image[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif precision != "fp32":
        raise ValueError(f"unknown TFLite precision {precision!r}: fp32, fp16 or int8")
    out = Path(out)
    out.write_bytes(converter.convert())
    return out


def to_onnx(model, out: Path, metadata: dict[str, str] | None = None) -> Path:
    """Float ONNX with a dynamic batch axis; `metadata` goes into the file's metadata_props."""
    import onnx
    import tensorflow as tf
    import tf2onnx

    size = model.input_shape[1]
    signature = (tf.TensorSpec((None, size, size, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=signature, opset=ONNX_OPSET)
    _set_metadata(proto, metadata)
    out = Path(out)
    onnx.save(proto, str(out))
    return out


def quantize_onnx(float_path: Path, out: Path, calibration: np.ndarray, activation_type: str = "uint8",
                  per_channel: bool = True, metadata: dict[str, str] | None = None) -> Path:
    """Static int8 ONNX (QDQ) from a float ONNX file and calibration images."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if activation_type not in ACTIVATION_TYPES:
        raise ValueError(f"activation type {activation_type!r}: choose uint8 (fastest on x86/ARM, U8S8) or int8")
    input_name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self, images: Iterable[np.ndarray]):
            self._it = iter(images)

        def get_next(self):
            image = next(self._it, None)
            return None if image is None else {input_name: image[None].astype(np.float32)}

    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(float_path), str(pre), skip_symbolic_shape=False)
        quantize_static(
            str(pre), str(out), Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
    if metadata:
        proto = onnx.load(str(out))
        _set_metadata(proto, metadata)
        onnx.save(proto, str(out))
    return Path(out)


def _set_metadata(proto, metadata: dict[str, str] | None) -> None:
    for key, value in (metadata or {}).items():
        for prop in proto.metadata_props:
            if prop.key == key:
                prop.value = value
                break
        else:
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
