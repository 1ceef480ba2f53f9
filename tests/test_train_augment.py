"""The robust training augmentations: shape, range, determinism, and that each changes what it should."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from wbcedge.train.augment import AugmentConfig, hed_matrices, make_augment, zoom_range  # noqa: E402
from wbcedge.train.training import TrainConfig  # noqa: E402

SIZE = 48
OFF = AugmentConfig.none()


def cell_batch(n: int = 4) -> np.ndarray:
    """A violet disc (a nucleus) on a pale pink background, float 0-255, with a pale-red ring beside it."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = np.empty((SIZE, SIZE, 3), np.float32)
    img[:] = (235, 205, 200)
    img[(yy - 20) ** 2 + (xx - 22) ** 2 < 9 ** 2] = (90, 50, 140)
    ring = np.abs(np.hypot(yy - 38, xx - 38) - 6) < 2
    img[ring] = (200, 130, 130)
    return np.repeat(img[None], n, axis=0)


def run(cfg: AugmentConfig, x: np.ndarray, seed=(1, 2)) -> np.ndarray:
    return make_augment(cfg, 0.44)(tf.constant(x), tf.constant(seed)).numpy()


def dark_mask(x: np.ndarray) -> np.ndarray:
    gray = x.mean(-1)
    return gray < (gray.max() + gray.min()) / 2


@pytest.mark.parametrize("option", [
    dict(), dict(flips=True, rot90=True), dict(scale=True), dict(hed=0.1, hed_bias=0.02),
    dict(white_balance=0.2, tint=0.1), dict(hue=0.05, saturation=0.3), dict(brightness=0.2, contrast=0.3, gamma=0.3),
    dict(defocus=1.0), dict(motion=1.0), dict(noise=8.0), dict(jpeg=1.0), dict(gray=0.5), "robust"])
def test_shape_dtype_range_and_determinism(option) -> None:
    cfg = AugmentConfig() if option == "robust" else replace(OFF, **option)
    x = cell_batch()
    a, b, c = run(cfg, x, (3, 4)), run(cfg, x, (3, 4)), run(cfg, x, (3, 5))
    assert a.shape == x.shape and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, b)  # same seed, same pictures
    if option:
        assert np.abs(a - c).max() > 1.0, "another seed should give other pictures"
    else:
        np.testing.assert_allclose(a, x, atol=1e-3)  # everything off leaves the input as it was


def test_hed_jitter_changes_stain_but_not_geometry() -> None:
    x = cell_batch(8)
    y = run(replace(OFF, hed=0.15, hed_bias=0.03), x)
    assert np.abs(y.mean(axis=(1, 2)) - x.mean(axis=(1, 2))).max() > 3.0  # colour moved
    for i in range(len(x)):
        # a colour transform, nothing moves: each input colour maps to one output colour
        # wherever it is, and different colours stay different
        colours = np.unique(x[i].reshape(-1, 3), axis=0)
        outputs = []
        for colour in colours:
            where = (x[i] == colour).all(-1)
            assert y[i][where].std(axis=0).max() < 0.05
            outputs.append(y[i][where].mean(axis=0))
        gaps = [np.abs(a - b).max() for j, a in enumerate(outputs) for b in outputs[j + 1:]]
        assert min(gaps) > 1.0


def test_hed_matrices_come_from_scikit_image_and_invert_each_other() -> None:
    hed_from_rgb, rgb_from_hed = hed_matrices()
    np.testing.assert_allclose(hed_from_rgb @ rgb_from_hed, np.eye(3), atol=1e-5)


def test_hed_round_trip_without_jitter_is_the_identity() -> None:
    x = cell_batch(2)
    y = run(replace(OFF, hed=1e-9), x)
    np.testing.assert_allclose(y, x, atol=0.5)


def test_scale_jitter_keeps_the_cell_within_the_allowed_sizes() -> None:
    cfg = AugmentConfig()
    lo, hi = zoom_range(cfg, 0.44)
    assert (lo, hi) == pytest.approx((0.75, 1.25))  # physical size +/-25% binds before 0.3-0.6 of the crop
    assert zoom_range(replace(cfg, size_jitter=1.0), 0.44) == pytest.approx((0.3 / 0.44, 0.6 / 0.44))
    x = cell_batch(16)
    y = run(replace(OFF, scale=True), x, (9, 9))
    area0 = dark_mask(x[0]).sum()
    ratios = np.array([dark_mask(img).sum() / area0 for img in y])
    assert ratios.min() >= lo ** 2 * 0.85 and ratios.max() <= hi ** 2 * 1.15
    assert ratios.max() - ratios.min() > 0.3  # sizes really vary


def test_blur_and_noise_do_what_they_say() -> None:
    x = cell_batch(2)
    sharp = np.abs(np.diff(x, axis=2)).mean()
    assert np.abs(np.diff(run(replace(OFF, defocus=1.0), x), axis=2)).mean() < sharp
    noisy = run(replace(OFF, noise=10.0), x, (5, 5))
    assert 0.3 < np.abs(noisy - x).mean() < 10.0


def test_old_configs_map_onto_the_new_options() -> None:
    old = {"flips": True, "rot90": True, "hue": 0.04, "blur": 0.3, "channel_gain": 0.1}
    cfg = AugmentConfig.from_dict(old, "none")
    assert cfg.defocus == 0.3 and cfg.white_balance == 0.1 and cfg.hed == 0.0 and not cfg.scale
    assert AugmentConfig.from_dict({"hed": 0.1}).scale  # robust preset underneath
    with pytest.raises(ValueError, match="unknown augmentation"):
        AugmentConfig.from_dict({"sharpen": 1})
    with pytest.raises(ValueError, match="preset"):
        AugmentConfig.from_dict({}, "heavy")


def test_train_config_nests_the_preprocessing_spec_and_reads_old_layouts(tmp_path) -> None:
    import json
    old = {"manifest": "m.csv", "model": "mobilenet_v2", "input_size": 160, "cell_fraction": 0.44, "crop_um": 33.6,
           "augment": {"flips": True}, "model_options": {"name": "mobilenet_v2", "input_size": 160}}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(old))
    cfg = TrainConfig.load(path)
    assert cfg.preprocess == {"input_size": 160, "cell_fraction": 0.44, "crop_um": 33.6}
    assert cfg.augment_preset == "none"
    assert TrainConfig().augment_preset == "robust"


def test_an_augment_table_in_a_toml_changes_the_robust_preset_and_does_not_switch_it_off(tmp_path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('manifest = "m.csv"\n\n[augment]\nclean = 0.15\n')
    cfg = TrainConfig.load(path)
    assert cfg.augment_preset == "robust"
    resolved = AugmentConfig.from_dict(cfg.augment, cfg.augment_preset)
    assert resolved.clean == 0.15 and resolved.hed > 0 and resolved.defocus > 0 and resolved.scale and resolved.flips
    path.write_text('manifest = "m.csv"\naugment_preset = "none"\n\n[augment]\nclean = 0.15\n')
    assert not AugmentConfig.from_dict(TrainConfig.load(path).augment, "none").flips


def test_clean_share_leaves_that_share_of_images_as_given() -> None:
    x = cell_batch(64)
    photometric = dict(hed=0.1, white_balance=0.2, brightness=0.2, noise=8.0)
    kept = run(replace(OFF, clean=0.5, **photometric), x, (7, 8))
    unchanged = np.abs(kept - x).reshape(len(x), -1).max(axis=1) < 1e-3
    assert 16 < unchanged.sum() < 48  # about half, drawn per image
    assert not np.any(np.abs(run(replace(OFF, **photometric), x, (7, 8)) - x).reshape(len(x), -1).max(axis=1) < 1e-3)
    everything = run(replace(OFF, clean=1.0, flips=True, rot90=True, **photometric), x, (7, 8))
    geometric_only = run(replace(OFF, flips=True, rot90=True), x, (7, 8))
    np.testing.assert_allclose(everything, geometric_only, atol=1e-3)  # flips and turns still apply
