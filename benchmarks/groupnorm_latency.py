"""Is GroupNorm's int8 cost on the CPU in how Keras writes it, or in GroupNorm itself?

    PYTHONPATH=$PWD python benchmarks/groupnorm_latency.py

The trained GroupNorm model (training/runs/robust-edge-gn) converted to int8 TFLite twice: with
Keras's GroupNormalization (5-D reshape, moments) and with a 4-D form (per-channel spatial means,
then a block-averaging matrix over each group's channels), against the built-in BatchNorm model's
int8 file. Accuracy on 200 PBC test crops, then the median of 40 interleaved single-cell calls,
one thread. Files are written under /tmp/gnlat. An experiment for docs/model-card.md, not a
layer the package uses.

    PYTHONPATH=$PWD python benchmarks/groupnorm_latency.py --where

Where GroupNorm may go: MobileNetV2 0.35 at 160 px (random weights; latency does not depend on
them) with GroupNorm in place of BatchNorm only where the feature maps are at most S pixels a
side (S = 5: the last stage, what `norm = "group-late"` builds; 10; 20; 80 = every convolution),
and on the stem's first convolution only; the dense head's normalisations as BatchNorm in every
row; int8 TFLite, 60 interleaved calls.
"""
import sys
import time
from pathlib import Path

import keras
import numpy as np

from wbcedge.data import read_manifest
from wbcedge.device.runtime import Classifier
from wbcedge.labels import class_indices
from wbcedge.train.adapt_site import site_inputs
from wbcedge.train.convert import to_tflite
from wbcedge.train.models.groupnorm import _leaf_layers
from wbcedge.train.run_folder import load_run


class SpatialGN(keras.layers.GroupNormalization):
    """4-D only: per-channel spatial means, then a block-averaging matmul over each group's channels."""
    def build(self, input_shape):
        super().build(input_shape)
        c = int(input_shape[-1]); g = self.groups
        m = np.zeros((c, c), np.float32)
        for k in range(g):
            s = slice(k * c // g, (k + 1) * c // g); m[s, s] = 1.0 / (c // g)
        self.avg = m
    def call(self, x):
        axes = tuple(range(1, len(x.shape) - 1))
        mean_c = keras.ops.mean(x, axis=axes, keepdims=True) if axes else x  # N,1,1,C
        mean = keras.ops.matmul(mean_c, self.avg)                             # group mean per channel
        centred = x - mean
        var_c = keras.ops.mean(centred * centred, axis=axes, keepdims=True) if axes else centred * centred
        var = keras.ops.matmul(var_c, self.avg)
        return centred * (keras.ops.rsqrt(var + self.epsilon) * self.gamma) + self.beta

def swap_to(model, cls):
    def f(layer):
        if type(layer) is keras.layers.GroupNormalization:
            return cls.from_config(layer.get_config())
        return layer.__class__.from_config(layer.get_config())
    clone = keras.models.clone_model(model, clone_function=f, recursive=True)
    for a, b in zip(_leaf_layers(model), _leaf_layers(clone)):
        if a.get_weights(): b.set_weights(a.get_weights())
    return clone

def where_latency():
    from wbcedge.train.models.groupnorm import to_group_norm
    from wbcedge.train.models.registry import all_layers, create_model
    base = create_model("mobilenet_v2", alpha=0.35, input_size=160, weights="none")
    def side(layer):
        shape = layer.output.shape
        return int(shape[1]) if len(shape) == 4 else 0
    calib = np.random.default_rng(0).integers(0, 255, (32, 160, 160, 3)).astype(np.float32)
    out = Path("/tmp/gnlat"); out.mkdir(exist_ok=True)
    files = {"batchnorm": to_tflite(base, out / "bn.tflite", "int8", calib)}
    for s in (5, 10, 20, 80):
        m = to_group_norm(base, where=lambda layer, s=s: 0 < side(layer) <= s)
        files[f"groupnorm where side <= {s}"] = to_tflite(m, out / f"gn{s}.tflite", "int8", calib)
    stem = next(layer.name for layer in all_layers(base) if isinstance(layer, keras.layers.BatchNormalization))
    m = to_group_norm(base, where=lambda layer: layer.name == stem)   # the first one only: 80x80x16
    files["groupnorm on the stem only"] = to_tflite(m, out / "gn_stem.tflite", "int8", calib)
    clfs = {k: Classifier(v, threads=1) for k, v in files.items()}
    times = {k: [] for k in clfs}
    for _ in range(60):
        for k, c in clfs.items():
            t = time.perf_counter(); c.predict(calib[:1].astype(np.uint8)); times[k].append(time.perf_counter() - t)
    base_ms = np.median(times["batchnorm"])
    for k, v in times.items():
        print(f"{k}: {1000 * np.median(v):.3f} ms, {np.median(v) / base_ms:.2f}x, {files[k].stat().st_size // 1024} KiB")


def keras_vs_spatial():
    pred = load_run(Path("training/runs/robust-edge-gn"))
    model, spec = pred.keras_model, pred.spec
    recs = [r for r in read_manifest(Path("training/pbc_split.csv")) if r.split == "train"][::40][:150]
    calib = site_inputs(recs, spec)
    test = [r for r in read_manifest(Path("training/pbc_split.csv")) if r.split == "test"][::5]
    xt = site_inputs(test, spec); yt = class_indices(r.label for r in test)
    sp = swap_to(model, SpatialGN)
    x = calib[:8].astype(np.float32)
    print("max diff spatial vs keras", float(np.abs(sp.predict(x, verbose=0) - model.predict(x, verbose=0)).max()))
    out = Path("/tmp/gnlat"); out.mkdir(exist_ok=True)
    files = {"keras_gn": to_tflite(model, out / "keras.tflite", "int8", calib), "spatial_gn": to_tflite(sp, out / "spatial.tflite", "int8", calib),
             "bn_default": Path("wbcedge/default_bundle/model_int8.tflite")}
    clfs = {k: Classifier(v, threads=1) for k, v in files.items()}
    for k, c in clfs.items():
        print(k, "acc on", len(xt), float((c.predict_many(xt).argmax(1) == yt).mean()))
    one = calib[:1]
    times = {k: [] for k in clfs}
    for _ in range(40):
        for k, c in clfs.items():
            t = time.perf_counter(); c.predict(one); times[k].append(time.perf_counter() - t)
    for k, v in times.items():
        print(k, "median ms", round(1000 * float(np.median(v)), 3))


if __name__ == "__main__":
    where_latency() if "--where" in sys.argv[1:] else keras_vs_spatial()
