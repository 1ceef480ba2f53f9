"""Frame sources: files, folders, globs, videos, cameras that fail, profiles and focus."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from wbcedge.device import capture
from wbcedge.device.capture import (CameraLostError, CameraProfile, Frame, LiveSource, OpenCVCameraSource,
                             PiCameraSource, ProfileError, RetryPolicy, SourceError, VideoFileSource,
                             detect_platform, focus_score, is_blurred, jetson_pipeline, open_camera,
                             open_source, picamera2_controls)


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    img[:8, :8] = (255, 0, 0)  # a pure blue corner in BGR
    return img


@pytest.fixture
def stills(tmp_path: Path) -> Path:
    folder = tmp_path / "stills"
    folder.mkdir()
    for i in (1, 2, 10):
        cv2.imwrite(str(folder / f"field{i}.png"), _image(i))
    (folder / "field3.png").write_bytes(b"this is not a png")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_folder_source_yields_bgr_frames_in_natural_order_and_reports_bad_files(stills: Path) -> None:
    seen = []
    with open_source(str(stills), on_problem=seen.append) as src:
        assert not src.is_stream and not src.live
        frames = list(src)
    assert [f.name for f in frames] == ["field1.png", "field2.png", "field10.png"]
    assert [f.index for f in frames] == [0, 1, 2]
    for f in frames:
        assert isinstance(f, Frame)
        assert f.image.dtype == np.uint8 and f.image.shape == (48, 64, 3)
        assert tuple(f.image[0, 0]) == (255, 0, 0)  # still BGR: blue in channel 0
    np.testing.assert_array_equal(frames[2].image, _image(10))
    assert len(src.problems) == 1 and "field3.png" in src.problems[0]
    assert seen == src.problems


def test_glob_and_single_file_sources(stills: Path) -> None:
    with open_source(str(stills / "field1*.png")) as src:
        assert [f.name for f in src] == ["field1.png", "field10.png"]
    with open_source(str(stills / "field2.png")) as src:
        frames = list(src)
    assert len(frames) == 1 and frames[0].name == "field2.png"


def test_gray_and_16bit_images_become_8bit_bgr(tmp_path: Path) -> None:
    cv2.imwrite(str(tmp_path / "a.png"), np.full((20, 30), 100, np.uint8))
    cv2.imwrite(str(tmp_path / "b.png"), np.full((20, 30, 3), 257 * 200, np.uint16))
    frames = list(open_source(str(tmp_path)))
    assert all(f.image.shape == (20, 30, 3) and f.image.dtype == np.uint8 for f in frames)
    assert frames[0].image[0, 0, 0] == 100 and frames[1].image[0, 0, 0] == 200


@pytest.mark.parametrize("make, words", [
    (lambda p: p / "missing.png", ["missing.png", "does not exist", "--camera"]),
    (lambda p: p / "nothing*.png", ["matches no image"]),
    (lambda p: (p / "empty").mkdir() or p / "empty", ["holds no image files"]),
    (lambda p: (p / "x.xyz").write_text("?") and p / "x.xyz", ["unknown file type", ".xyz"]),
])
def test_bad_paths_raise_source_error_naming_the_path(tmp_path: Path, make, words) -> None:
    path = make(tmp_path)
    with pytest.raises(SourceError) as info:
        open_source(str(path))
    for word in words:
        assert word in str(info.value)


def test_source_and_camera_together_is_an_error(stills: Path) -> None:
    with pytest.raises(SourceError, match="not both"):
        open_source(str(stills), camera="0")
    with pytest.raises(SourceError, match="not understood"):
        open_camera("webcam-please")


def _write_video(path: Path, n: int, size=(64, 48)) -> list[np.ndarray]:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    frames = []
    for i in range(n):
        img = np.zeros((size[1], size[0], 3), np.uint8)
        img[:, :, 2] = 200          # red in BGR
        img[:, : 4 + 5 * i, 0] = 200  # a growing blue band
        writer.write(img)
        frames.append(img)
    writer.release()
    return frames


def test_video_source(tmp_path: Path) -> None:
    path = tmp_path / "smear.avi"
    written = _write_video(path, 8)
    with open_source(str(path)) as src:
        assert isinstance(src, VideoFileSource) and src.is_stream and not src.live
        frames = list(src)
    assert len(frames) == 8
    assert frames[3].name == "smear#000003"
    assert frames[1].timestamp == pytest.approx(0.1, abs=0.02)
    for got, want in zip(frames, written):
        assert got.image.shape == want.shape
        assert np.abs(got.image.astype(int) - want).mean() < 12  # JPEG-compressed, same colours
    assert frames[0].image[24, 50, 2] > 150 and frames[0].image[24, 50, 0] < 50
    assert src.closed


class FakeCapture:
    """A cv2.VideoCapture stand-in whose reads follow a script: True = a frame, False = a failure."""

    def __init__(self, script: list[bool], frame_count: int = 0):
        self.script = list(script)
        self.frame_count = frame_count
        self.released = False
        self.settings: dict[int, float] = {}

    def isOpened(self) -> bool:
        return True

    def read(self):
        ok = self.script.pop(0) if self.script else False
        return (ok, _image(len(self.script)) if ok else None)

    def get(self, prop):
        if prop == cv2.CAP_PROP_FRAME_COUNT:
            return self.frame_count
        return self.settings.get(prop, 0.0)

    def set(self, prop, value) -> bool:
        self.settings[prop] = value
        return prop != cv2.CAP_PROP_EXPOSURE  # this camera has no manual exposure

    def release(self) -> None:
        self.released = True


def test_video_frame_that_fails_to_decode_is_reported_and_skipped(tmp_path: Path) -> None:
    fake = FakeCapture([True, False, True, True, False], frame_count=5)
    src = VideoFileSource(tmp_path / "v.avi", capture=fake)
    frames = list(src)
    assert [f.name for f in frames] == ["v#000000", "v#000002", "v#000003"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert len(src.problems) == 1 and "frame 1" in src.problems[0]
    assert fake.released


class ScriptedCamera(LiveSource):
    def __init__(self, script, **kw):
        super().__init__("testcam", **kw)
        self.script = list(script)
        self.released = False

    def _read(self):
        step = self.script.pop(0) if self.script else "fail"
        if step == "raise":
            raise RuntimeError("device disconnected")
        return _image(1) if step == "ok" else None

    def _release(self):
        self.released = True


def test_live_camera_retries_with_backoff_then_raises_camera_lost() -> None:
    sleeps: list[float] = []
    cam = ScriptedCamera(["ok", "ok", "raise"], retry=RetryPolicy(attempts=4, first_delay_s=0.1), sleep=sleeps.append)
    assert cam.live and cam.is_stream
    assert next(cam).index == 0 and next(cam).name == "testcam-000001"
    with pytest.raises(CameraLostError) as info:
        next(cam)
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8])
    message = str(info.value)
    assert "testcam" in message and "stopped delivering frames" in message and "5 reads failed" in message
    cam.close()
    assert cam.released


def test_live_camera_recovers_within_retries() -> None:
    sleeps: list[float] = []
    cam = ScriptedCamera(["ok", "fail", "fail", "ok"], sleep=sleeps.append)
    frames = [next(cam), next(cam)]
    assert [f.index for f in frames] == [0, 1]
    assert sleeps == pytest.approx([0.1, 0.2])
    assert "recovered after 2 retries" in cam.problems[-1]


def test_default_backoff_is_five_tries_from_0_1_to_1_6_s() -> None:
    assert RetryPolicy().delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6])


def test_opencv_camera_reconnects_then_reports_lost() -> None:
    captures: list[FakeCapture] = []

    def open_capture():
        cap = FakeCapture([True, True] if not captures else [])
        captures.append(cap)
        return cap

    profile = CameraProfile(width=640, height=480, exposure_us=5000, awb_gains=(2.0, 1.5))
    src = OpenCVCameraSource("usb0", open_capture, profile, retry=RetryPolicy(3, 0.001), sleep=lambda s: None)
    assert captures[0].settings[cv2.CAP_PROP_FRAME_WIDTH] == 640
    assert captures[0].settings[cv2.CAP_PROP_AUTO_EXPOSURE] == 1
    assert any("manual exposure" in p for p in src.problems)
    assert any("awb_gains" in p for p in src.problems)
    assert len(list(zip(range(2), src))) == 2
    with pytest.raises(CameraLostError, match="usb0"):
        next(src)
    assert len(captures) == 3  # re-opened before the 2nd and 3rd retry
    assert all(c.released for c in captures[:-1])
    src.close()
    assert captures[-1].released


class FakePicamera2:
    instances: list["FakePicamera2"] = []

    def __init__(self, camera_num=0):
        self.calls: list[tuple] = []
        self.frame = _image(7)
        FakePicamera2.instances.append(self)

    def create_video_configuration(self, main, controls):
        return {"main": main, "controls": controls}

    def configure(self, config):
        self.calls.append(("configure", config))

    def set_controls(self, controls):
        self.calls.append(("set_controls", controls))

    def start(self):
        self.calls.append(("start",))

    def capture_array(self, name, wait=None):
        frame = self.frame

        class Job:
            def get_result(self, timeout=None):
                return frame
        return Job()

    def stop(self):
        self.calls.append(("stop",))

    def close(self):
        self.calls.append(("close",))


def test_picamera2_source_asks_for_rgb888_applies_the_profile_and_does_not_convert() -> None:
    profile = CameraProfile(width=2028, height=1520, fps=10, exposure_us=150000, analogue_gain=1.5,
                            awb_gains=(2.1, 1.7))
    src = PiCameraSource(profile, picamera2_class=FakePicamera2)
    cam = FakePicamera2.instances[-1]
    config = cam.calls[0][1]
    assert config["main"] == {"size": (2028, 1520), "format": "RGB888"}
    assert config["controls"]["FrameDurationLimits"] == (150000, 150000)  # long exposure lengthens the frame
    assert cam.calls[1] == ("set_controls", {"AeEnable": False, "ExposureTime": 150000, "AnalogueGain": 1.5,
                                             "AwbEnable": False, "ColourGains": (2.1, 1.7)})
    frame = next(src)
    np.testing.assert_array_equal(frame.image, cam.frame)  # "RGB888" is BGR in memory: used as is
    src.close()
    assert cam.calls[-2:] == [("stop",), ("close",)]


def test_picamera2_controls_leave_unset_settings_automatic() -> None:
    assert picamera2_controls(CameraProfile()) == {}


def test_jetson_pipeline_keeps_only_the_newest_bgr_frame() -> None:
    pipe = jetson_pipeline(CameraProfile(width=1920, height=1080, fps=30, exposure_us=10000), sensor_id=1)
    assert pipe.startswith("nvarguscamerasrc sensor-id=1")
    assert 'exposuretimerange="10000000 10000000"' in pipe
    assert "width=1920, height=1080, framerate=30/1" in pipe
    assert "format=BGR !" in pipe and pipe.endswith("appsink drop=true max-buffers=1 sync=false")


def test_jetson_camera_without_gstreamer_says_what_to_do(monkeypatch) -> None:
    monkeypatch.setattr(capture, "opencv_has_gstreamer", lambda: False)
    with pytest.raises(SourceError, match="without GStreamer"):
        open_camera("auto", platform="jetson")


def test_detect_platform(tmp_path: Path) -> None:
    model, tegra = tmp_path / "model", tmp_path / "nv_tegra_release"
    assert detect_platform(model, tegra) == "other"
    model.write_bytes(b"Raspberry Pi 5 Model B Rev 1.0\x00")
    assert detect_platform(model, tegra) == "raspberry-pi"
    model.write_bytes(b"NVIDIA Orin Nano\x00")
    tegra.write_text("# R36 (release), REVISION: 3.0")
    assert detect_platform(model, tegra) == "jetson"


def test_profiles_load_from_toml(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1] / "device" / "profiles"
    pi = CameraProfile.load(root / "pi-hq-camera.toml")
    assert pi.name == "pi-hq-camera" and pi.awb_gains == (2.0, 1.6) and pi.exposure_us == 8000
    usb = CameraProfile.load(root / "usb-microscope.toml")
    assert usb.awb_gains is None and usb.width == 1280
    path = tmp_path / "scope.toml"
    path.write_text('width = 800\nheight = 600\nawb_gains = { r = 1.9, b = 1.4 }\n')
    prof = CameraProfile.load(path)
    assert prof.name == "scope" and prof.awb_gains == (1.9, 1.4) and prof.fps == 10.0
    assert CameraProfile.from_dict(prof.to_dict()) == prof


@pytest.mark.parametrize("text, words", [
    ("width = 800\nexposure = 100\n", ["unknown setting", "exposure"]),
    ("width = -5\n", ["width must be a positive"]),
    ("awb_gains = [1.0]\n", ["awb_gains"]),
    ("width = \n", ["not valid TOML"]),
])
def test_bad_profiles_name_the_problem(tmp_path: Path, text: str, words: list[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ProfileError) as info:
        CameraProfile.load(path)
    for word in words:
        assert word in str(info.value)


def test_focus_score_separates_sharp_from_blurred() -> None:
    rng = np.random.default_rng(0)
    sharp = cv2.GaussianBlur(rng.integers(0, 255, (720, 1280, 3), dtype=np.uint8), (0, 0), 1.5)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 6)
    s, b = focus_score(sharp), focus_score(blurred)
    assert s > 10 * b
    assert not is_blurred(s, 50.0) and is_blurred(b, 50.0)
    assert focus_score(sharp[:, :, 0]) > 0  # gray input works too
