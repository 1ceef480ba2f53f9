"""Keras-applications backbones with the paper's dense heads (Tables II-V).

Head: global average pooling, Dense 64, then two blocks of Dense 128 ->
BatchNorm -> ReLU -> Dropout, then Dense 5 softmax. In the paper's MobileNetV2
table the Dense 64 is itself followed by BatchNorm/ReLU/Dropout; in the other
three it is linear. We keep that difference.

Each backbone's own input scaling is a layer inside the model, so the model
always takes 0-255 RGB pixels.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers

from wbcedge.errors import InputDataError
from wbcedge.train.models.registry import ModelOptions, register

_BACKBONES = {
    # name: (constructor, input scaling, min input size, Dense64 followed by BN/ReLU/Dropout)
    "mobilenet_v2": (keras.applications.MobileNetV2, "tf", 32, True),
    "inception_v3": (keras.applications.InceptionV3, "tf", 75, False),
    "xception": (keras.applications.Xception, "tf", 71, False),
    "resnet50": (keras.applications.ResNet50, "caffe", 32, False),
}

_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


class WeightsUnavailableError(InputDataError):
    pass


def _scaled_input(x, mode: str):
    if mode == "tf":  # [-1, 1]
        return layers.Rescaling(1.0 / 127.5, offset=-1.0, name="scale")(x), None
    # "caffe": RGB -> BGR and ImageNet mean subtraction, as a fixed 1x1 convolution
    # (a standard layer: it serialises, converts and quantises like any other).
    conv = layers.Conv2D(3, 1, name="caffe_bgr_mean", trainable=False)
    return conv(x), conv


def _init_caffe(conv) -> None:
    kernel = np.zeros((1, 1, 3, 3), np.float32)
    for out_c, in_c in enumerate((2, 1, 0)):
        kernel[0, 0, in_c, out_c] = 1.0
    conv.set_weights([kernel, -_CAFFE_MEAN_BGR])


def _backbone(name: str, opts: ModelOptions, weights: str | None):
    ctor = _BACKBONES[name][0]
    kwargs = dict(input_shape=(opts.input_size, opts.input_size, 3), include_top=False, weights=weights)
    if name == "mobilenet_v2":
        kwargs["alpha"] = opts.alpha
    return ctor(**kwargs)


def _load_backbone(name: str, opts: ModelOptions):
    if opts.weights != "imagenet":
        return _backbone(name, opts, None)
    try:
        return _backbone(name, opts, "imagenet")
    except Exception as exc:  # no network, a proxy, or a size Keras has no weights for
        if opts.weights_fallback:
            import warnings
            warnings.warn(f"ImageNet weights for {name} could not be loaded ({exc}); training from scratch "
                          "because --weights-fallback was given", stacklevel=2)
            return _backbone(name, opts, None)
        raise WeightsUnavailableError(
            f"could not load ImageNet weights for {name} at {opts.input_size}px ({type(exc).__name__}: {exc}). "
            "Keras downloads them on first use into ~/.keras/models: check the network, or copy the file there, "
            "or pass --weights none to train from scratch (--weights-fallback does that automatically)."
        ) from exc


def _build(name: str, opts: ModelOptions) -> keras.Model:
    _, scaling, min_size, dense64_block = _BACKBONES[name]
    if opts.input_size < min_size:
        raise InputDataError(f"{name} needs an input size of at least {min_size}px, got {opts.input_size}")
    backbone = _load_backbone(name, opts)
    inputs = keras.Input((opts.input_size, opts.input_size, 3), name="image")
    x, caffe_conv = _scaled_input(inputs, scaling)
    x = backbone(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(64, name="dense64")(x)
    if dense64_block:
        x = _bn_relu_dropout(x, opts.dropout, "head64")
    for i in (1, 2):
        x = layers.Dense(128, name=f"dense128_{i}")(x)
        x = _bn_relu_dropout(x, opts.dropout, f"head128_{i}")
    outputs = layers.Dense(opts.num_classes, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name=name)
    if caffe_conv is not None:
        _init_caffe(caffe_conv)
    if opts.weights not in ("none", "imagenet"):
        model.load_weights(opts.weights)
    return model


def _bn_relu_dropout(x, rate: float, name: str):
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.ReLU(name=f"{name}_relu")(x)
    return layers.Dropout(rate, name=f"{name}_dropout")(x)


def backbone_of(model: keras.Model) -> keras.Model | None:
    """The nested Keras-applications backbone of a zoo model (None for residual_cnn)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    return None


for _name in _BACKBONES:
    register(_name)(lambda opts, _n=_name: _build(_n, opts))
