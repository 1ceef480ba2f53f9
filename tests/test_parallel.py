"""The one parallel map: results in order, and never a fork of a process that holds TensorFlow."""

from __future__ import annotations

import sys
import types

import numpy as np

from wbcedge.data import SAMPLES_DIR
from wbcedge.parallel import parallel_map, pool_context
from wbcedge.preprocess import PreprocessSpec, load_inputs, read_image, to_model_input


def square(x: int) -> int:
    return x * x


def test_results_come_back_in_order_with_workers_or_without():
    items = list(range(50))
    assert list(parallel_map(square, items, workers=2, chunksize=3)) == [x * x for x in items]
    assert list(parallel_map(square, items, workers=1)) == [x * x for x in items]
    assert list(parallel_map(square, [], workers=2)) == []


def test_spawn_once_tensorflow_is_imported(monkeypatch):
    monkeypatch.delitem(sys.modules, "tensorflow", raising=False)
    assert pool_context().get_start_method() == "forkserver"
    monkeypatch.setitem(sys.modules, "tensorflow", types.ModuleType("tensorflow"))
    assert pool_context().get_start_method() == "spawn"


def test_load_inputs_in_parallel_equals_one_crop_at_a_time():
    paths = sorted(SAMPLES_DIR.glob("*/*.jpg"))[:6]
    spec = PreprocessSpec(input_size=48)
    together = load_inputs(paths, spec, workers=2)
    one_by_one = np.stack([to_model_input(read_image(p), spec) for p in paths])
    assert together.dtype == np.uint8 and together.shape == (6, 48, 48, 3)
    assert np.array_equal(together, one_by_one)
    assert load_inputs([], spec).shape == (0, 48, 48, 3)
