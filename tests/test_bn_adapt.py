"""BatchNorm statistics re-estimated on target cells: the stored statistics become the target's."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from wbcedge.errors import InputDataError  # noqa: E402
from wbcedge.train.bn_adapt import reestimate_batchnorm  # noqa: E402
from wbcedge.train.models import create_model  # noqa: E402


def test_moving_statistics_become_those_of_the_target_inputs() -> None:
    keras.utils.set_random_seed(0)
    model = create_model("residual_cnn", input_size=16)
    rng = np.random.default_rng(0)
    target = rng.integers(100, 256, (40, 16, 16, 3)).astype(np.float32)  # a brighter "microscope"
    bn = model.get_layer("block1_proj_bn")
    before = keras.ops.convert_to_numpy(bn.moving_mean)
    weights_before = model.get_layer("dense256").get_weights()[0].copy()
    reestimate_batchnorm(model, target, batch_size=20)
    conv_out = keras.Model(model.input, model.get_layer("block1_proj").output)(target).numpy()
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), conv_out.mean(axis=(0, 1, 2)), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), conv_out.var(axis=(0, 1, 2)), rtol=0.05, atol=1e-4)
    assert np.abs(keras.ops.convert_to_numpy(bn.moving_mean) - before).max() > 1e-3
    np.testing.assert_array_equal(model.get_layer("dense256").get_weights()[0], weights_before)  # weights untouched
    assert bn.momentum == pytest.approx(0.9)  # settings restored


def test_a_model_without_batchnorm_or_without_cells_is_refused() -> None:
    model = create_model("residual_cnn", input_size=16, norm="group")
    with pytest.raises(InputDataError, match="no BatchNormalization"):
        reestimate_batchnorm(model, np.zeros((4, 16, 16, 3), np.float32))
    with pytest.raises(InputDataError, match="at least 2"):
        reestimate_batchnorm(create_model("residual_cnn", input_size=16), np.zeros((1, 16, 16, 3), np.float32))
