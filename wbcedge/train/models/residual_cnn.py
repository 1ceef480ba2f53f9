"""The paper's custom model: three residual blocks (64, 128, 256 filters), dense 256-128-5.

Each block is conv3x3-BN-ReLU-conv3x3-BN plus a 1x1 projection shortcut at
stride 1, then ReLU and 2x2 max-pooling. The shortcut is never a strided 1x1
convolution on the raw input: that layer shape crashes TensorFlow's CPU kernels
(docs/known-traps.md, trap 1). With two 3x3 convolutions per block this has about 1.3 M
parameters, not the paper's "under 400,000": the paper does not give the layer
details that would make its count reachable with these filter sizes.
"""

from __future__ import annotations

import keras
from keras import layers

from wbcedge.errors import InputDataError
from wbcedge.train.models.registry import ModelOptions, register


def residual_block(x, filters: int, name: str):
    shortcut = layers.Conv2D(filters, 1, padding="same", use_bias=False, name=f"{name}_proj")(x)
    shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = layers.BatchNormalization(name=f"{name}_bn1")(y)
    y = layers.ReLU(name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = layers.BatchNormalization(name=f"{name}_bn2")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    y = layers.ReLU(name=f"{name}_out")(y)
    return layers.MaxPooling2D(2, name=f"{name}_pool")(y)


@register("residual_cnn")
def build(opts: ModelOptions) -> keras.Model:
    inputs = keras.Input((opts.input_size, opts.input_size, 3), name="image")
    x = layers.Rescaling(1.0 / 255.0, name="scale")(inputs)
    for i, filters in enumerate((64, 128, 256), start=1):
        x = residual_block(x, filters, name=f"block{i}")
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    for units in (256, 128):
        x = layers.Dense(units, activation="relu", name=f"dense{units}")(x)
        x = layers.Dropout(opts.dropout, name=f"dropout{units}")(x)
    outputs = layers.Dense(opts.num_classes, activation="softmax", name="probs")(x)
    model = keras.Model(inputs, outputs, name="residual_cnn")
    if opts.weights not in ("none", "imagenet"):
        model.load_weights(opts.weights)
    elif opts.weights == "imagenet":
        raise InputDataError("residual_cnn has no ImageNet weights: use --weights none or a path to your own weights")
    return model
