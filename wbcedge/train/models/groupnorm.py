"""Batch-independent normalisation: a model's BatchNormalization layers swapped for GroupNormalization.

Cross-microscope studies found BatchNorm's stored statistics a main cause of collapse on
another microscope (docs/reference notes: ResNet50 with GroupNorm kept 78% where BatchNorm
fell to 35%). GroupNorm normalises every image by its own statistics, so nothing learnt
about PBC's colour and contrast is frozen into the model. The swap clones the Keras graph
(the applications backbone included), so any zoo family can be built either way.
"""

from __future__ import annotations

import math

import keras

MAX_GROUPS = 8  # MobileNetV2 at width 0.35 has layers with 8 channels; 8 groups divide every width


def groups_for(channels: int) -> int:
    return math.gcd(channels, MAX_GROUPS)


def to_group_norm(model: keras.Model, where=None) -> keras.Model:
    """A copy of `model` with each BatchNormalization (or each one for which `where(layer)` is
    true) replaced by GroupNormalization over the same axis; BatchNorm's scale and offset carry
    over (its moving statistics cannot)."""
    def swapped(layer) -> bool:
        return isinstance(layer, keras.layers.BatchNormalization) and (where is None or where(layer))

    def swap(layer):
        if swapped(layer):
            channels = int(layer.gamma.shape[0]) if layer.built else None
            if channels is None:
                raise ValueError(f"{layer.name} is not built: build the model before swapping its normalisation")
            gn = keras.layers.GroupNormalization(groups=groups_for(channels), axis=layer.axis if isinstance(layer.axis, int)
                                                 else layer.axis[0], epsilon=1e-3, name=layer.name.replace("bn", "gn")
                                                 if "bn" in layer.name else layer.name + "_gn")
            return gn
        return layer.__class__.from_config(layer.get_config())

    def call(layer, *args, **kwargs):
        if isinstance(layer, keras.layers.GroupNormalization):
            kwargs.pop("mask", None)  # BatchNormalization's call took a mask; GroupNormalization's does not
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(model, clone_function=swap, call_function=call, recursive=True)
    for old, new in zip(_leaf_layers(model), _leaf_layers(clone)):
        weights = old.get_weights()
        if isinstance(old, keras.layers.BatchNormalization) and isinstance(new, keras.layers.GroupNormalization):
            new.set_weights(weights[:2])  # gamma, beta
        elif weights:
            new.set_weights(weights)
    return clone


def late_layers(input_size: int, stride: int = 32):
    """`where` for `to_group_norm`: the normalisations of the last stage (feature maps at most
    input_size / stride a side) and of the dense head, where GroupNorm costs little on the device."""
    def where(layer) -> bool:
        shape = layer.output.shape
        return len(shape) == 2 or (len(shape) == 4 and shape[1] is not None and shape[1] <= input_size // stride)
    return where


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer
