"""The preprocessing spec: crop geometry, physical vs fractional sizing, background borders, colour order, keys.

Frames are generated so that every pixel says where it came from (x in the blue
channel, y in the green one), so a crop can be checked pixel by pixel.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from wbcedge.errors import InputDataError, InputFileMissingError
from wbcedge.preprocess import (
    SPEC_FILE,
    PreprocessSpec,
    as_bgr,
    background_colour,
    center_square,
    crop_around_cell,
    read_image,
    to_model_input,
)


def coordinate_frame(w: int = 240, h: int = 200) -> np.ndarray:
    """BGR frame whose pixel (y, x) is (x, y, 77): the crop's corners tell where it was cut."""
    ys, xs = np.mgrid[0:h, 0:w]
    return np.dstack([xs, ys, np.full_like(xs, 77)]).astype(np.uint8)


def origin(crop: np.ndarray) -> tuple[int, int]:
    return int(crop[0, 0, 0]), int(crop[0, 0, 1])


def test_fractional_crop_is_centred_and_sized_by_the_cell():
    frame, spec = coordinate_frame(), PreprocessSpec(cell_fraction=0.5, crop_um=33.6)
    crop = crop_around_cell(frame, (100, 80, 140, 110), spec)  # 40 x 30 px box, centre (120, 95)
    assert crop.shape == (80, 80, 3)                            # the larger side / cell_fraction
    assert origin(crop) == (80, 55)                             # centre - side / 2
    assert tuple(crop[40, 40, :2]) == (120, 95)


def test_physical_crop_ignores_the_box_size_when_the_scale_is_known():
    frame, spec = coordinate_frame(), PreprocessSpec(cell_fraction=0.5, crop_um=33.6)
    small = crop_around_cell(frame, (110, 85, 130, 105), spec, um_per_px=0.42)
    large = crop_around_cell(frame, (90, 65, 150, 125), spec, um_per_px=0.42)
    assert small.shape == large.shape == (80, 80, 3)            # 33.6 um / 0.42 um per px
    assert origin(small) == origin(large) == (80, 55)
    assert crop_around_cell(frame, (110, 85, 130, 105), spec, um_per_px=0.84).shape == (40, 40, 3)
    # Without crop_um, or without the frame's scale, the cell fraction decides.
    assert crop_around_cell(frame, (110, 85, 130, 105), PreprocessSpec(cell_fraction=0.5),
                            um_per_px=0.42).shape == (40, 40, 3)
    assert crop_around_cell(frame, (110, 85, 130, 105), spec).shape == (40, 40, 3)


def test_a_cell_at_the_edge_keeps_its_size_with_a_background_coloured_border():
    frame, spec = coordinate_frame(), PreprocessSpec(cell_fraction=0.5)
    crop = crop_around_cell(frame, (0, 0, 20, 20), spec)        # centre (10, 10), side 40: 10 px outside
    assert crop.shape == (40, 40, 3)
    assert tuple(crop[10, 10, :2]) == (0, 0)                    # the frame's corner sits 10 px in
    # Outside the frame: one even colour, the frame's background (its brightest quarter), no streaks.
    fill = np.array(background_colour(frame), np.uint8)
    assert (crop[:10].reshape(-1, 3) == fill).all() and (crop[:, :10].reshape(-1, 3) == fill).all()
    assert np.array_equal(crop[10:, 10:], frame[:30, :30])      # inside: the frame as it is
    assert tuple(crop[-1, -1, :2]) == (29, 29)
    tiny = crop_around_cell(frame, (5, 5, 6, 6), spec)
    assert tiny.shape == (8, 8, 3)                              # never below 8 px


def test_model_input_is_the_centre_square_resized_in_the_model_colour_order():
    bgr = np.zeros((30, 50, 3), np.uint8)
    bgr[:, 10:40] = (255, 0, 0)                                 # a blue centre square, black sides
    rgb = to_model_input(bgr, PreprocessSpec(input_size=16))
    assert rgb.shape == (16, 16, 3) and rgb.dtype == np.uint8 and rgb.flags["C_CONTIGUOUS"]
    assert np.all(rgb[..., 2] == 255) and np.all(rgb[..., :2] == 0)  # blue lands in the last channel of RGB
    same = to_model_input(bgr, PreprocessSpec(input_size=16, color_order="BGR"))
    assert np.all(same[..., 0] == 255) and np.all(same[..., 1:] == 0)
    assert center_square(bgr).shape == (30, 30, 3)
    with pytest.raises(ValueError, match="HxWx3 uint8 BGR"):
        to_model_input(bgr[..., 0], PreprocessSpec())


def test_shrinking_uses_the_specs_interpolation_and_growing_is_linear():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (64, 64, 3), np.uint8)
    area = to_model_input(big, PreprocessSpec(input_size=16, color_order="BGR"))
    assert np.array_equal(area, cv2.resize(big, (16, 16), interpolation=cv2.INTER_AREA))
    cubic = to_model_input(big, PreprocessSpec(input_size=16, color_order="BGR", interpolation="cubic"))
    assert np.array_equal(cubic, cv2.resize(big, (16, 16), interpolation=cv2.INTER_CUBIC))
    small = big[:8, :8]
    grown = to_model_input(small, PreprocessSpec(input_size=16, color_order="BGR", interpolation="cubic"))
    assert np.array_equal(grown, cv2.resize(small, (16, 16), interpolation=cv2.INTER_LINEAR))


def test_spec_round_trips_and_unknown_keys_are_refused(tmp_path):
    spec = PreprocessSpec(input_size=160, crop_um=33.6)
    spec.save(tmp_path)
    assert PreprocessSpec.load(tmp_path) == spec
    data = json.loads((tmp_path / SPEC_FILE).read_text())
    data["gamma"] = 2.2
    (tmp_path / SPEC_FILE).write_text(json.dumps(data))
    with pytest.raises(InputDataError, match=r"unknown keys \['gamma'\].*upgrade wbcedge or re-export"):
        PreprocessSpec.load(tmp_path)
    with pytest.raises(InputFileMissingError, match="must carry its preprocessing spec"):
        PreprocessSpec.load(tmp_path / "elsewhere")


def test_images_become_8bit_bgr(tmp_path):
    gray16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    assert np.array_equal(as_bgr(gray16), cv2.cvtColor((gray16 // 257).astype(np.uint8), cv2.COLOR_GRAY2BGR))
    bgra = np.dstack([coordinate_frame(8, 8), np.full((8, 8), 9, np.uint8)])
    assert np.array_equal(as_bgr(bgra), coordinate_frame(8, 8))
    with pytest.raises(ValueError, match="pixel type float32"):
        as_bgr(np.zeros((4, 4, 3), np.float32))
    png = tmp_path / "gray.png"
    cv2.imwrite(str(png), gray16)
    assert read_image(png).shape == (8, 8, 3)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputDataError, match="empty file"):
        read_image(tmp_path / "empty.jpg")
