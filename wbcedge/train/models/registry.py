"""Name -> builder, and the options every family understands."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import keras

from wbcedge.errors import InputDataError
from wbcedge.labels import CLASSES


@dataclass(frozen=True)
class ModelOptions:
    name: str = "mobilenet_v2"
    input_size: int = 128
    alpha: float = 1.0            # width multiplier (mobilenet_v2 only)
    weights: str = "none"         # "imagenet", "none" or a path to a .weights.h5 / .keras file
    weights_fallback: bool = False  # if ImageNet weights cannot be had, train from scratch instead of failing
    dropout: float = 0.3
    num_classes: int = len(CLASSES)

    def to_dict(self) -> dict:
        return asdict(self)


_BUILDERS: dict[str, Callable[[ModelOptions], keras.Model]] = {}


def register(name: str):
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def create_model(name: str | None = None, options: ModelOptions | None = None, **kwargs) -> keras.Model:
    """Build a model by name with the paper's head; kwargs override `options` fields."""
    from wbcedge.train.models import applications, residual_cnn  # noqa: F401  (register the families)

    opts = options or ModelOptions()
    if name is not None:
        kwargs["name"] = name
    if kwargs:
        opts = ModelOptions(**{**opts.to_dict(), **kwargs})
    if opts.name not in _BUILDERS:
        raise InputDataError(f"unknown model '{opts.name}'; choose one of: {', '.join(sorted(_BUILDERS))}")
    model = _BUILDERS[opts.name](opts)
    # Short training leaves BatchNorm moving statistics unsettled at Keras' 0.99/0.999
    # momentum and inference collapses to one class (docs/known-traps.md, trap 2).
    set_batchnorm_momentum(model, 0.9)
    return model


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)


MODEL_NAMES = ("residual_cnn", "mobilenet_v2", "inception_v3", "xception", "resnet50")
