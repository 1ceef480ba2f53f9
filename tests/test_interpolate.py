"""Weight-space interpolation of two runs: the ends are the runs themselves, the middle is halfway."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("tensorflow")

from wbcedge.errors import InputDataError  # noqa: E402
from wbcedge.train.bn_adapt import adapt_run  # noqa: E402
from wbcedge.train.interpolate import interpolate_weights, mix_runs  # noqa: E402
from wbcedge.train.models import create_model  # noqa: E402
from wbcedge.train.run_folder import load_run  # noqa: E402


def test_weights_mix_linearly_and_other_architectures_are_refused() -> None:
    a, b = [np.zeros((2, 3), np.float32), np.ones(4, np.float32)], [np.full((2, 3), 4.0, np.float32), np.zeros(4, np.float32)]
    mixed = interpolate_weights(a, b, 0.25)
    np.testing.assert_allclose(mixed[0], 1.0)
    np.testing.assert_allclose(mixed[1], 0.75)
    assert mixed[0].dtype == np.float32
    with pytest.raises(InputDataError, match="between 0"):
        interpolate_weights(a, b, 1.5)
    small, wide = create_model("residual_cnn", input_size=16), create_model("mobilenet_v2", input_size=32, alpha=0.35)
    with pytest.raises(InputDataError, match="architecture"):
        interpolate_weights(small.get_weights(), wide.get_weights(), 0.5)


@pytest.mark.slow
def test_interpolated_run_folder_ends_at_each_run_and_is_halfway_between(default_run, tmp_path) -> None:
    rng = np.random.default_rng(0)
    spec = load_run(default_run).spec
    bright = rng.integers(150, 256, (16, spec.input_size, spec.input_size, 3)).astype(np.uint8)
    other = adapt_run(default_run, bright, tmp_path / "other", "random bright inputs")  # only BatchNorm statistics differ
    wa, wb = load_run(default_run).keras_model.get_weights(), load_run(other).keras_model.get_weights()
    assert max(float(np.abs(a - b).max()) for a, b in zip(wa, wb)) > 1e-2
    for t in (0.0, 0.5, 1.0):
        mixed = load_run(mix_runs([default_run, other], tmp_path / f"t{t}", t))
        assert mixed.spec == spec and mixed.classes == load_run(default_run).classes
        for a, b, m in zip(wa, wb, mixed.keras_model.get_weights()):
            np.testing.assert_allclose(m, (1 - t) * a + t * b, rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "t0.5" / "interpolated.json").read_text())["t"] == 0.5


def test_a_soup_is_the_uniform_average_and_needs_two_runs_of_one_architecture(tmp_path) -> None:
    from wbcedge.train.interpolate import average_weights

    members = [[np.full((2, 2), v, np.float32), np.array([v, -v], np.float32)] for v in (1.0, 2.0, 6.0)]
    soup = average_weights(members)
    np.testing.assert_allclose(soup[0], 3.0)
    np.testing.assert_allclose(soup[1], [3.0, -3.0])
    assert soup[0].dtype == np.float32
    with pytest.raises(InputDataError, match="at least two"):
        mix_runs([tmp_path], tmp_path / "out")
    with pytest.raises(InputDataError, match="exactly two"):
        mix_runs([tmp_path, tmp_path, tmp_path], tmp_path / "out", t=0.5)


@pytest.mark.slow
def test_a_soup_run_folder_averages_three_runs(default_run, tmp_path) -> None:
    rng = np.random.default_rng(1)
    spec = load_run(default_run).spec
    runs = [default_run]
    for k, (lo, hi) in enumerate([(150, 256), (0, 100)]):
        x = rng.integers(lo, hi, (16, spec.input_size, spec.input_size, 3)).astype(np.uint8)
        runs.append(adapt_run(default_run, x, tmp_path / f"run{k}", "random inputs"))
    weights = [load_run(r).keras_model.get_weights() for r in runs]
    soup = load_run(mix_runs(runs, tmp_path / "soup"))
    for i, got in enumerate(soup.keras_model.get_weights()):
        np.testing.assert_allclose(got, np.mean([w[i] for w in weights], axis=0), rtol=1e-5, atol=1e-6)
    assert json.loads((tmp_path / "soup" / "interpolated.json").read_text())["runs"] == [str(r) for r in runs]
