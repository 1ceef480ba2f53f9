"""Name -> builder, and the options every family understands."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import keras

from wbcedge.errors import InputDataError
from wbcedge.labels import CLASSES
from wbcedge.preprocess import PreprocessSpec

# Each family's preprocessing defaults (like timm's pretrained configs): what a model of
# that family expects when nothing else says. Data-dependent fields (cell_fraction,
# crop_um) keep PreprocessSpec's own defaults unless a config or a run folder sets them.
FAMILY_PREPROCESS: dict[str, dict] = {
    "residual_cnn": {},
    "mobilenet_v2": {},
    "resnet50": {"input_size": 224},
    "inception_v3": {"input_size": 299},
    "xception": {"input_size": 299},
}

NORMS = ("batch", "group", "group-late")
# "group-late": GroupNorm only where it is cheap on the device: the last stage (feature maps at
# most 1/32 of the input side: 5x5 at 160 px) and the dense head; BatchNorm (folded into the
# convolutions at export) everywhere else. int8 TFLite, one thread, this CPU: 1.05-1.18x the
# all-BatchNorm network's inference, against 1.5-1.7x with GroupNorm from 1/16 on and 10x
# everywhere (benchmarks/groupnorm_latency.py --where). Measured on BCCD it bought nothing
# (30.7% against its BatchNorm twin's 29.5%, docs/model-card.md): kept as a measured option.


def default_preprocess(family: str) -> PreprocessSpec:
    """The preprocessing spec a model family expects unless told otherwise."""
    return PreprocessSpec.from_dict({**PreprocessSpec().to_dict(), **FAMILY_PREPROCESS.get(family, {})})


@dataclass(frozen=True)
class ModelOptions:
    name: str = "mobilenet_v2"
    preprocess: PreprocessSpec = field(default_factory=PreprocessSpec)
    alpha: float = 1.0            # width multiplier (mobilenet_v2 only)
    weights: str = "none"         # "imagenet", "none" or a path to a .weights.h5 / .keras file
    weights_fallback: bool = False  # if ImageNet weights cannot be had, train from scratch instead of failing
    dropout: float = 0.3
    num_classes: int = len(CLASSES)
    norm: str = "batch"           # "batch": BatchNormalization as Keras builds it; "group": GroupNormalization
                                  # everywhere; "group-late": only in the last stage and the head (NORMS)

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    def to_dict(self) -> dict:
        return {**asdict(self), "preprocess": self.preprocess.to_dict()}


_BUILDERS: dict[str, Callable[[ModelOptions], keras.Model]] = {}


def register(name: str):
    def wrap(fn):
        _BUILDERS[name] = fn
        return fn
    return wrap


def create_model(name: str | None = None, options: ModelOptions | None = None, **kwargs) -> keras.Model:
    """Build a model by name with the paper's head; kwargs override `options` fields."""
    from wbcedge.train.models import applications, residual_cnn  # noqa: F401  (register the families)

    if name is not None:
        kwargs["name"] = name
    if options is None:
        family = kwargs.get("name", ModelOptions.name)
        options = ModelOptions(name=family, preprocess=default_preprocess(family))
    spec = options.preprocess
    if "input_size" in kwargs:  # a shortcut for the one spec field a model's shape depends on
        spec = PreprocessSpec.from_dict({**spec.to_dict(), "input_size": kwargs.pop("input_size")})
    opts = ModelOptions(**{**asdict(options), "preprocess": spec, **kwargs})
    if opts.name not in _BUILDERS:
        raise InputDataError(f"unknown model '{opts.name}'; choose one of: {', '.join(sorted(_BUILDERS))}")
    if opts.norm not in NORMS:
        raise InputDataError(f"unknown normalisation '{opts.norm}'; choose one of: {', '.join(NORMS)}")
    if opts.norm != "batch":  # build with BatchNorm, swap, then load GroupNorm weights if given
        from wbcedge.train.models.groupnorm import late_layers, to_group_norm
        built = _BUILDERS[opts.name](opts if opts.weights in ("none", "imagenet") else _group_norm_start(opts))
        model = to_group_norm(built, where=late_layers(opts.input_size) if opts.norm == "group-late" else None)
        if opts.weights not in ("none", "imagenet") and not _is_batchnorm_checkpoint(opts):
            model.load_weights(opts.weights)
    else:
        model = _BUILDERS[opts.name](opts)
    # Short training leaves BatchNorm moving statistics unsettled at Keras' 0.99/0.999
    # momentum and inference collapses to one class (docs/known-traps.md, trap 2).
    set_batchnorm_momentum(model, 0.9)
    return model


def _is_batchnorm_checkpoint(opts: ModelOptions) -> bool:
    """Whether a .keras weights file holds a BatchNorm model (a GroupNorm model can warm-start from it)."""
    if not str(opts.weights).endswith(".keras"):
        return False
    import zipfile
    with zipfile.ZipFile(opts.weights) as z:
        config = z.read("config.json").decode()
    return "BatchNormalization" in config and "GroupNormalization" not in config


def _group_norm_start(opts: ModelOptions) -> ModelOptions:
    # From a BatchNorm checkpoint: load it into the BatchNorm build, then swap (scale and
    # offset carry over). From a GroupNorm checkpoint: build empty, load after the swap.
    return opts if _is_batchnorm_checkpoint(opts) else replace(opts, weights="none")


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> None:
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = momentum


def all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from all_layers(layer)


MODEL_NAMES = ("residual_cnn", "mobilenet_v2", "inception_v3", "xception", "resnet50")
