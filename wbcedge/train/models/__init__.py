"""The model zoo: one registry of named architectures, created by name.

    create_model("mobilenet_v2", input_size=128, alpha=0.35, weights="none")

Every model takes uint8-range RGB pixels (as float32 or uint8) of shape
(input_size, input_size, 3) and does its own scaling inside, so the
preprocessing outside the model is only crop + resize (wbcedge.preprocess).
Importing this package imports TensorFlow/Keras: training side only.
"""

from __future__ import annotations

from wbcedge.train.models.registry import (
    MODEL_NAMES,
    ModelOptions,
    create_model,
    default_preprocess,
    set_batchnorm_momentum,
)

__all__ = ["MODEL_NAMES", "ModelOptions", "create_model", "default_preprocess", "set_batchnorm_momentum"]
