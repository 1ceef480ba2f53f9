"""BatchNorm statistics re-estimated on a target microscope's unlabelled cells (AdaBN).

A BatchNorm layer stores the mean and variance of its inputs over the training images;
on another microscope those are wrong and the network's features drift. Recomputing them
on that microscope's own cells (no labels) is the cheapest adaptation there is: weights
stay as trained, only the stored statistics change. The result exports like any model.
"""

from __future__ import annotations

import numpy as np

from wbcedge.errors import InputDataError


def _layers(model):
    for layer in model.layers:
        yield layer
        if hasattr(layer, "layers"):
            yield from _layers(layer)


def reestimate_batchnorm(model, inputs: np.ndarray, batch_size: int = 64):
    """Set every BatchNormalization's moving mean and variance to the average over `inputs`
    (uint8 or float model inputs, N x S x S x 3) of its per-batch statistics; returns `model`."""
    import keras

    if len(inputs) < 2:
        raise InputDataError("re-estimating BatchNorm needs at least 2 target cells (use tens to hundreds)")
    bns = [layer for layer in _layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns:
        raise InputDataError(f"{model.name} has no BatchNormalization layer to re-estimate")
    dropouts = [layer for layer in _layers(model) if isinstance(layer, keras.layers.Dropout)]
    saved = [(layer.momentum, layer.trainable) for layer in bns], [layer.rate for layer in dropouts]
    for layer in dropouts:
        layer.rate = 0.0  # training mode for BatchNorm only: no dropout noise in the statistics
    x = np.asarray(inputs, np.float32)
    starts = list(range(0, len(x) - 1, batch_size))
    try:
        for k, start in enumerate(starts):
            for layer in bns:  # a running average over batches: batch k weighs 1/(k+1)
                layer.trainable = True
                layer.momentum = k / (k + 1)
            model(x[start:start + batch_size], training=True)
    finally:
        for layer, (momentum, trainable) in zip(bns, saved[0]):
            layer.momentum, layer.trainable = momentum, trainable
        for layer, rate in zip(dropouts, saved[1]):
            layer.rate = rate
    return model
