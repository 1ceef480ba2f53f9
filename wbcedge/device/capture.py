"""Frame sources: image files, folders, globs, videos and live cameras, all as one iterator.

Every frame leaves this module as an 8-bit BGR array (HxWx3, uint8, OpenCV's
channel order). Everything after capture (locate, track, crop, the model runtime's
preprocessing) takes frames in that form and converts to the model's RGB itself
(`preprocess.to_model_input`), exactly once.

Pixel format and colour order per source:
- image files, folders, globs: decoded by OpenCV (`preprocess.read_image`), BGR;
  16-bit images are scaled to 8 bits, gray and BGRA become BGR.
- video files: `cv2.VideoCapture` decodes to BGR.
- Raspberry Pi camera: picamera2 main stream in format "RGB888", which libcamera lays
  out as B, G, R bytes in memory: it already IS OpenCV's BGR. It is not converted.
- Jetson CSI camera: GStreamer `nvarguscamerasrc` -> NV12 -> `nvvidconv` BGRx ->
  `videoconvert` BGR -> appsink; OpenCV hands over BGR.
- USB / V4L2 camera (`--camera 0`): `cv2.VideoCapture` converts YUYV/MJPG to BGR.

Live cameras retry a failed read with exponential backoff and then raise
`CameraLostError`; file sources report a frame they cannot use and go on: an image
whose header claims more than the pixel budget (`wbcedge.imagefile`, checked from the
header before decoding), smaller than a cell, or undecodable becomes a `SkippedFrame`
with its reason (`FrameSource.take_skipped()`), which the run records and reports.
Globs with `**` walk folders without following symbolic links (no loop), and every
source reads each file once (duplicates through links are dropped).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable, Iterator

import cv2
import numpy as np

from wbcedge.errors import CameraError, InputDataError, MissingDependencyError
from wbcedge.imagefile import MIN_SIDE, display_name
from wbcedge.preprocess import IMAGE_SUFFIXES, as_bgr, read_image  # noqa: F401  (IMAGE_SUFFIXES: used below and by callers)
from wbcedge.tomlfile import loads_toml

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv", ".mjpeg", ".mjpg"}

PI_MODEL_FILE = Path("/proc/device-tree/model")
JETSON_RELEASE_FILE = Path("/etc/nv_tegra_release")

# Variance of the Laplacian measured at this width (long side), so one threshold
# means the same across cameras of different resolution.
FOCUS_WIDTH = 512
# A starting point only: sharp smears at 40-100x score in the hundreds, a frame taken
# while the stage moves scores tens. Calibrate per microscope (`blur_threshold` in the profile).
DEFAULT_BLUR_THRESHOLD = 50.0


class SourceError(InputDataError):
    """A frame source that cannot be opened: a missing path, an unknown format, no camera."""


class CameraUnavailableError(CameraError, SourceError):
    """A camera that is absent or cannot be opened or configured (exit code 3, like a lost camera)."""


class CameraDriverMissingError(MissingDependencyError, SourceError):
    """The camera's Python driver (picamera2) is not importable: install it (exit code 5)."""


class CameraLostError(CameraError):
    """A live camera stopped delivering frames and did not come back after retries."""


class ProfileError(InputDataError):
    """A camera profile file that cannot be read or holds an invalid setting."""


# ---------------------------------------------------------------- camera profiles

@dataclass(frozen=True)
class CameraProfile:
    """How to drive one camera on one microscope. Unset (None) settings stay automatic.

    Fixing exposure and white balance matters: auto exposure and auto white balance
    drift with the field (more or fewer red cells), and the model then sees colour
    shifts it was not trained on.
    """
    name: str = "default"
    width: int = 1280
    height: int = 720
    fps: float = 10.0
    exposure_us: int | None = None                 # None: auto exposure
    analogue_gain: float | None = None             # None: automatic
    awb_gains: tuple[float, float] | None = None   # (red, blue) colour gains; None: auto white balance
    um_per_px: float | None = None                 # micrometres of specimen per frame pixel (stage micrometer)
    blur_threshold: float | None = None            # focus_score below this = blurred; None: DEFAULT_BLUR_THRESHOLD

    def __post_init__(self) -> None:
        problems = []
        for key in ("width", "height"):
            value = getattr(self, key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                problems.append(f"{key} must be a positive whole number of pixels, got {value!r}")
        if not _positive(self.fps):
            problems.append(f"fps must be a positive number, got {self.fps!r}")
        if self.exposure_us is not None and not _positive(self.exposure_us):
            problems.append(f"exposure_us must be a positive number of microseconds, got {self.exposure_us!r}")
        if self.analogue_gain is not None and not _positive(self.analogue_gain):
            problems.append(f"analogue_gain must be a positive number (1.0 = no gain), got {self.analogue_gain!r}")
        if self.awb_gains is not None:
            gains = self.awb_gains
            if len(gains) != 2 or not all(_positive(g) for g in gains):
                problems.append(f"awb_gains must be two positive numbers [red, blue], got {gains!r}")
        if self.um_per_px is not None and not _positive(self.um_per_px):
            problems.append(f"um_per_px must be a positive number, got {self.um_per_px!r}")
        if self.blur_threshold is not None and not (_positive(self.blur_threshold) or self.blur_threshold == 0):
            problems.append(f"blur_threshold must be a number >= 0, got {self.blur_threshold!r}")
        if problems:
            raise ProfileError(f"camera profile '{self.name}': " + "; ".join(problems))

    @property
    def focus_threshold(self) -> float:
        return DEFAULT_BLUR_THRESHOLD if self.blur_threshold is None else float(self.blur_threshold)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.awb_gains is not None:
            data["awb_gains"] = list(self.awb_gains)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "profile") -> "CameraProfile":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ProfileError(f"{origin}: unknown setting(s) {sorted(unknown)}; a camera profile knows {sorted(known)}")
        values = dict(data)
        gains = values.get("awb_gains")
        if isinstance(gains, dict):  # awb_gains = { r = 1.9, b = 1.6 }
            extra = set(gains) - {"r", "b", "red", "blue"}
            if extra:
                raise ProfileError(f"{origin}: awb_gains takes r and b, not {sorted(extra)}")
            gains = (gains.get("r", gains.get("red")), gains.get("b", gains.get("blue")))
        if gains is not None:
            if not isinstance(gains, (list, tuple)) or len(gains) != 2:
                raise ProfileError(f"{origin}: awb_gains must be [red, blue], e.g. awb_gains = [1.9, 1.6]; got {gains!r}")
            values["awb_gains"] = tuple(float(g) if _number(g) else g for g in gains)
        for key in ("width", "height"):
            if isinstance(values.get(key), float) and float(values[key]).is_integer():
                values[key] = int(values[key])
        try:
            return cls(**values)
        except ProfileError as exc:
            raise ProfileError(f"{origin}: {exc}") from None

    @classmethod
    def load(cls, path: str | Path) -> "CameraProfile":
        """Read a profile from a TOML file (see device/profiles/*.toml)."""
        path = Path(path)
        if not path.is_file():
            raise ProfileError(f"camera profile {path} does not exist; see device/profiles/ for examples")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ProfileError(f"cannot read camera profile {path}: {exc}") from None
        try:
            data = loads_toml(text)
        except (ValueError, RecursionError) as exc:  # TOMLDecodeError, or nesting too deep
            raise ProfileError(f"camera profile {path} is not valid TOML: {exc}") from None
        if "camera" in data and isinstance(data["camera"], dict) and len(data) == 1:
            data = data["camera"]  # also accept everything under a [camera] table
        data.setdefault("name", path.stem)
        return cls.from_dict(data, origin=str(path))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive(value: Any) -> bool:
    return _number(value) and math.isfinite(value) and value > 0


# ---------------------------------------------------------------- focus

def focus_score(image_bgr: np.ndarray) -> float:
    """Sharpness of a frame: variance of the Laplacian of its gray image shrunk to FOCUS_WIDTH.

    Higher is sharper. Shrinking first makes the score comparable across camera
    resolutions and cheap (about 1 ms on a Pi 4 for a 1280x720 frame).
    """
    gray = image_bgr if image_bgr.ndim == 2 else cv2.cvtColor(image_bgr, cv2.COLOR_BGR2GRAY)
    h, w = gray.shape[:2]
    scale = FOCUS_WIDTH / max(h, w)
    if scale < 1.0:
        gray = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


def is_blurred(score: float, threshold: float = DEFAULT_BLUR_THRESHOLD) -> bool:
    """True when a focus score is below the threshold (out of focus, or the stage was moving)."""
    return score < threshold


# ---------------------------------------------------------------- frames and sources

@dataclass
class Frame:
    index: int           # 0, 1, 2 ... in delivery order (frames that failed to decode take no index)
    image: np.ndarray    # HxWx3 uint8, BGR
    timestamp: float     # seconds: wall clock (time.time()) for cameras and stills, position in the file for videos
    name: str            # file name, or "<video stem>#000042", or "<camera>-000042"


@dataclass(frozen=True)
class SkippedFrame:
    name: str      # the file name as the OS gave it (may hold undecodable bytes as surrogates)
    reason: str    # why it was not used, e.g. "PNG header claims 100000x100000 pixels, ..."


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff for a live camera read that failed: `attempts` retries, waiting
    first_delay_s, then twice that, ... (defaults: 0.1, 0.2, 0.4, 0.8, 1.6 s)."""
    attempts: int = 5
    first_delay_s: float = 0.1
    factor: float = 2.0

    @property
    def delays(self) -> list[float]:
        return [self.first_delay_s * self.factor ** i for i in range(self.attempts)]


class FrameSource:
    """An iterator of `Frame`s with `close()`; use it as a context manager.

    `is_stream` is True for cameras and videos (consecutive frames overlap: track
    cells so each is counted once) and False for independent stills. `problems`
    collects one line per frame that could not be read, or per camera setting that
    did not take.
    """
    is_stream = False
    live = False

    def __init__(self, label: str, on_problem: Callable[[str], None] | None = None):
        self.label = label
        self.problems: list[str] = []
        self._on_problem = on_problem
        self._next_index = 0
        self._closed = False
        self._skipped: list[SkippedFrame] = []

    def take_skipped(self) -> list[SkippedFrame]:
        """The frames skipped since the last call (the run records each one)."""
        out, self._skipped = self._skipped, []
        return out

    def _skip(self, name: str, reason: str) -> None:
        self._skipped.append(SkippedFrame(name, reason))
        self._report(f"skipped {display_name(name)}: {reason}")

    def __iter__(self) -> Iterator[Frame]:
        return self

    def __next__(self) -> Frame:
        raise NotImplementedError

    def close(self) -> None:
        self._closed = True

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.label!r})"

    def _report(self, message: str) -> None:
        self.problems.append(message)
        if self._on_problem is not None:
            self._on_problem(message)  # the listener tells the user: logging it too would say it twice
        else:
            log.warning(message)

    def _frame(self, image: np.ndarray, timestamp: float, name: str) -> Frame:
        frame = Frame(self._next_index, image, timestamp, name)
        self._next_index += 1
        return frame


class ImageFilesSource(FrameSource):
    """Still images from a list of files (one file, a folder or a glob), in the given order."""
    is_stream = False

    def __init__(self, paths: list[Path], label: str, on_problem: Callable[[str], None] | None = None):
        super().__init__(label, on_problem)
        self.paths = list(paths)
        self._pos = 0

    def __len__(self) -> int:
        return len(self.paths)

    def __next__(self) -> Frame:
        while not self._closed and self._pos < len(self.paths):
            path = self.paths[self._pos]
            self._pos += 1
            try:
                image = read_image(path, min_side=MIN_SIDE)  # a frame must hold a cell
            except (ValueError, OSError) as exc:  # ImageRejected is a ValueError
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
                self._skip(path.name, reason.removeprefix(f"{display_name(path)}: "))
                continue
            return self._frame(image, time.time(), path.name)
        raise StopIteration


class VideoFileSource(FrameSource):
    """Frames of a video file, decoded by OpenCV (FFmpeg) to BGR.

    A frame that fails to decode inside the file is reported and skipped; after
    `max_bad_frames` failures in a row (or past the container's frame count) the
    video is taken as finished.
    """
    is_stream = True

    def __init__(self, path: Path, on_problem: Callable[[str], None] | None = None,
                 capture: Any = None, max_bad_frames: int = 25):
        super().__init__(str(path), on_problem)
        self.path = Path(path)
        self._cap = capture if capture is not None else cv2.VideoCapture(str(path))
        if not self._cap.isOpened():
            self._cap.release()
            raise SourceError(f"{path}: OpenCV cannot open this video (unsupported codec or damaged file). "
                              f"Convert it, e.g. `ffmpeg -i {path.name} -c:v mjpeg -q:v 3 out.avi`, "
                              f"or extract frames to a folder of images.")
        count = self._cap.get(cv2.CAP_PROP_FRAME_COUNT)
        self.frame_count = int(count) if count and count > 0 else None
        self.max_bad_frames = max_bad_frames
        self._position = 0  # frames consumed from the container, good or bad

    def __next__(self) -> Frame:
        bad = 0
        while not self._closed:
            ok, image = self._cap.read()
            position = self._position
            self._position += 1
            if ok and image is not None:
                try:
                    image = as_bgr(image, min_side=MIN_SIDE)
                except ValueError as exc:
                    self._skip(f"{self.path.stem}#{position:06d}", str(exc))
                    continue
                msec = self._cap.get(cv2.CAP_PROP_POS_MSEC)
                return self._frame(image, (msec or 0.0) / 1000.0, f"{self.path.stem}#{position:06d}")
            # End of file, or a frame that would not decode: only the frame count tells them apart.
            if self.frame_count is None or position >= self.frame_count - 1:
                break
            bad += 1
            if bad >= self.max_bad_frames:
                self._report(f"{self.path}: {bad} frames in a row would not decode after frame {position - bad}; "
                             f"stopped reading this video there")
                break
            self._report(f"{self.path}: frame {position} could not be decoded; skipped")
        self.close()
        raise StopIteration

    def close(self) -> None:
        if not self._closed:
            self._cap.release()
        super().close()


class LiveSource(FrameSource):
    """A live camera. Subclasses implement `_read()` (a frame, or None on failure) and `_release()`.

    A failed read is retried after waits from `retry.delays`, calling `_reconnect()`
    from the second retry on; when every retry fails, `CameraLostError` is raised.
    """
    is_stream = True
    live = True

    def __init__(self, label: str, retry: RetryPolicy | None = None,
                 on_problem: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep):
        super().__init__(label, on_problem)
        self.retry = retry or RetryPolicy()
        self._sleep = sleep

    def _read(self) -> np.ndarray | None:
        raise NotImplementedError

    def _reconnect(self) -> None:
        """Try to re-open the device after repeated failures (default: nothing)."""

    def _release(self) -> None:
        pass

    def _try_read(self) -> tuple[np.ndarray | None, str]:
        try:
            image = self._read()
        except Exception as exc:  # drivers raise anything: RuntimeError, OSError, cv2.error
            return None, f"{type(exc).__name__}: {exc}"
        if image is None:
            return None, "no frame returned"
        try:
            return as_bgr(image), ""
        except ValueError as exc:
            return None, str(exc)

    def __next__(self) -> Frame:
        if self._closed:
            raise StopIteration
        image, why = self._try_read()
        if image is None:
            started = time.monotonic()
            delays = self.retry.delays
            for attempt, delay in enumerate(delays, start=1):
                log.warning("%s: read failed (%s); retry %d of %d in %.1f s", self.label, why, attempt, len(delays), delay)
                self._sleep(delay)
                if attempt >= 2:
                    try:
                        self._reconnect()
                    except Exception as exc:
                        why = f"reconnect failed: {type(exc).__name__}: {exc}"
                        continue
                image, why = self._try_read()
                if image is not None:
                    self._report(f"{self.label}: camera recovered after {attempt} retr{'y' if attempt == 1 else 'ies'}")
                    break
            else:
                waited = time.monotonic() - started
                span = f"{delays[0]:g}-{delays[-1]:g} s" if delays else "no retries"
                raise CameraLostError(
                    f"camera {self.label} stopped delivering frames after frame {self._next_index - 1}: "
                    f"{len(delays) + 1} reads failed over {waited:.1f} s (backoff {span}); last error: {why}. "
                    f"Check the camera cable or ribbon and its power, and that no other program holds the camera; "
                    f"then start the run again (cells recorded so far are kept)."
                )
        return self._frame(image, time.time(), f"{self.label}-{self._next_index:06d}")

    def close(self) -> None:
        if not self._closed:
            try:
                self._release()
            except Exception as exc:  # closing a lost camera may fail too; nothing left to do
                log.debug("%s: release failed: %s", self.label, exc)
        super().close()


@contextmanager
def opencv_warnings_hidden() -> Iterator[None]:
    """OpenCV's own log at ERROR level inside the block (it prints its WARN lines to stderr itself),
    unless this logger is at DEBUG, where they help to find out why a camera will not open."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    before = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(before)


class OpenCVCameraSource(LiveSource):
    """A camera read through cv2.VideoCapture: a V4L2/USB device or a GStreamer pipeline.

    `open_capture` makes a new cv2.VideoCapture-like object; it is called again to
    reconnect after repeated read failures (a USB camera that was unplugged and
    plugged back in).
    """

    def __init__(self, label: str, open_capture: Callable[[], Any], profile: CameraProfile | None = None,
                 configure: bool = True, retry: RetryPolicy | None = None,
                 on_problem: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep):
        super().__init__(label, retry, on_problem, sleep)
        self._open_capture = open_capture
        self.profile = profile or CameraProfile()
        self._configure = configure
        self._cap = self._open()
        if not self._cap.isOpened():
            self._cap.release()
            raise CameraUnavailableError(f"camera {label} could not be opened. Check it is connected (`v4l2-ctl --list-devices`), "
                              f"that no other program uses it, and that this user may open it (group 'video').")

    def _open(self) -> Any:
        with opencv_warnings_hidden():   # "can't open camera by index" lines: the error below says it, with what to do
            cap = self._open_capture()
        if self._configure and cap.isOpened():
            for note in apply_v4l2_profile(cap, self.profile):
                if note not in self.problems:
                    self._report(f"{self.label}: {note}")
        return cap

    def _read(self) -> np.ndarray | None:
        ok, image = self._cap.read()
        return image if ok else None

    def _reconnect(self) -> None:
        self._cap.release()
        self._cap = self._open()

    def _release(self) -> None:
        self._cap.release()


def apply_v4l2_profile(cap: Any, profile: CameraProfile) -> list[str]:
    """Apply a profile to a V4L2 capture; returns one note per setting the camera did not take."""
    notes = []
    cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # newest frame, not one queued seconds ago
    cap.set(cv2.CAP_PROP_FRAME_WIDTH, profile.width)
    cap.set(cv2.CAP_PROP_FRAME_HEIGHT, profile.height)
    cap.set(cv2.CAP_PROP_FPS, profile.fps)
    w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if (w, h) != (profile.width, profile.height) and w and h:
        notes.append(f"asked for {profile.width}x{profile.height}, the camera gives {w}x{h} "
                     f"(list its modes with `v4l2-ctl --list-formats-ext`)")
    if profile.exposure_us is not None:
        # OpenCV's V4L2 backend: AUTO_EXPOSURE 1 = manual (V4L2_EXPOSURE_MANUAL), 3 = auto;
        # EXPOSURE is V4L2's exposure_time_absolute, in units of 100 us.
        ok = cap.set(cv2.CAP_PROP_AUTO_EXPOSURE, 1) and cap.set(cv2.CAP_PROP_EXPOSURE, profile.exposure_us / 100.0)
        if not ok:
            notes.append(f"manual exposure ({profile.exposure_us} us) not supported; exposure stays automatic")
    if profile.analogue_gain is not None:
        notes.append("analogue_gain is not applied to USB cameras (UVC gain units differ per camera); "
                     "set it with `v4l2-ctl -c gain=...` if needed")
    if profile.awb_gains is not None:
        notes.append("awb_gains cannot be set on a UVC camera; white balance stays automatic. Fix it with "
                     "`v4l2-ctl -c white_balance_automatic=0 -c white_balance_temperature=<K>`")
    return notes


class PiCameraSource(LiveSource):
    """The Raspberry Pi camera through picamera2 (libcamera).

    Format "RGB888" is libcamera's name for pixels stored B, G, R in memory, i.e.
    OpenCV's BGR: the arrays are used as they are, never passed through cvtColor.
    """

    def __init__(self, profile: CameraProfile | None = None, camera_num: int = 0, retry: RetryPolicy | None = None,
                 on_problem: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
                 picamera2_class: Any = None, read_timeout_s: float = 5.0):
        super().__init__(f"picamera{camera_num}", retry, on_problem, sleep)
        self.profile = profile or CameraProfile()
        self.read_timeout_s = read_timeout_s
        if picamera2_class is None:
            try:
                from picamera2 import Picamera2 as picamera2_class  # only on a Pi, from apt
            except ImportError as exc:
                raise CameraDriverMissingError(
                    f"picamera2 is not importable ({exc}). On Raspberry Pi OS: `sudo apt install python3-picamera2`, "
                    f"and create the venv with `python3 -m venv --system-site-packages` (see docs/runner.md)."
                ) from None
        try:
            cam = picamera2_class(camera_num)
        except Exception as exc:
            raise CameraUnavailableError(f"Raspberry Pi camera {camera_num} could not be opened ({exc}). "
                              f"Check the ribbon cable and `rpicam-hello --list-cameras`.") from None
        self._cam = cam
        try:
            p = self.profile
            frame_us = int(round(1e6 / p.fps))
            if p.exposure_us is not None:
                frame_us = max(frame_us, int(p.exposure_us))  # a frame cannot be shorter than its exposure
            config = cam.create_video_configuration(
                main={"size": (p.width, p.height), "format": "RGB888"},  # B,G,R in memory = OpenCV BGR
                controls={"FrameDurationLimits": (frame_us, frame_us)},
            )
            cam.configure(config)
            controls = picamera2_controls(p)
            if controls:
                cam.set_controls(controls)
            cam.start()
        except Exception as exc:
            try:
                cam.close()
            finally:
                raise CameraUnavailableError(f"Raspberry Pi camera {camera_num} could not be configured for profile "
                                  f"'{self.profile.name}' ({exc}). Try a resolution the sensor offers.") from None

    def _read(self) -> np.ndarray | None:
        # A non-blocking request with a timeout, so a camera that hangs is noticed
        # rather than blocking the run forever; older picamera2 without timeouts blocks.
        job = self._cam.capture_array("main", wait=False)
        if isinstance(job, np.ndarray):  # a picamera2 that answered at once
            return job
        try:
            return job.get_result(timeout=self.read_timeout_s)
        except TypeError:
            return self._cam.wait(job)

    def _release(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()


def picamera2_controls(profile: CameraProfile) -> dict[str, Any]:
    """libcamera controls for a profile: fixed exposure, gain and white balance where set."""
    controls: dict[str, Any] = {}
    if profile.exposure_us is not None or profile.analogue_gain is not None:
        controls["AeEnable"] = False
    if profile.exposure_us is not None:
        controls["ExposureTime"] = int(profile.exposure_us)
    if profile.analogue_gain is not None:
        controls["AnalogueGain"] = float(profile.analogue_gain)
    if profile.awb_gains is not None:
        controls["AwbEnable"] = False
        controls["ColourGains"] = (float(profile.awb_gains[0]), float(profile.awb_gains[1]))
    return controls


def jetson_pipeline(profile: CameraProfile, sensor_id: int = 0) -> str:
    """A GStreamer pipeline for a Jetson CSI camera that ends in BGR frames for OpenCV.

    NV12 in NVMM memory -> nvvidconv to BGRx -> videoconvert to BGR; the appsink keeps
    only the newest frame (drop=true max-buffers=1) so a slow classifier never reads stale frames.
    """
    src = [f"nvarguscamerasrc sensor-id={sensor_id}"]
    if profile.exposure_us is not None:
        ns = int(profile.exposure_us) * 1000
        src.append(f'exposuretimerange="{ns} {ns}"')
    if profile.analogue_gain is not None:
        src.append(f'gainrange="{profile.analogue_gain:g} {profile.analogue_gain:g}"')
    fps = max(1, int(round(profile.fps)))
    return (" ".join(src)
            + f" ! video/x-raw(memory:NVMM), width={profile.width}, height={profile.height}, "
              f"framerate={fps}/1, format=NV12"
            + " ! nvvidconv ! video/x-raw, format=BGRx ! videoconvert ! video/x-raw, format=BGR"
            + " ! appsink drop=true max-buffers=1 sync=false")


def opencv_has_gstreamer() -> bool:
    info = cv2.getBuildInformation()
    match = re.search(r"GStreamer:\s*(\S+)", info)
    return bool(match) and match.group(1).upper() != "NO"


# ---------------------------------------------------------------- opening a source

def detect_platform(model_file: Path = PI_MODEL_FILE, jetson_file: Path = JETSON_RELEASE_FILE) -> str:
    """'raspberry-pi', 'jetson' or 'other', from the device tree and the L4T release file."""
    try:
        model = model_file.read_bytes().decode("utf-8", "replace").strip("\x00 \n")
    except OSError:
        model = ""
    if "raspberry pi" in model.lower():
        return "raspberry-pi"
    if jetson_file.exists() or "jetson" in model.lower():
        return "jetson"
    return "other"


def open_source(source: str | None, camera: str | None = None, profile: CameraProfile | None = None, *,
                retry: RetryPolicy | None = None, on_problem: Callable[[str], None] | None = None) -> FrameSource:
    """Open frames from a path (image, folder, glob, video) or a camera.

    camera: "auto" (Pi camera on a Raspberry Pi, CSI camera on a Jetson, else V4L2
    device 0), "pi", "jetson" or "jetson:<sensor-id>", an integer such as "0" (V4L2 /
    USB), or a device path such as /dev/video2. With neither a source nor a camera,
    the camera is "auto". The profile sets resolution, frame rate, exposure and white
    balance of cameras; files are read as they are.
    """
    if source is not None and camera is not None:
        raise SourceError("give either a source (image, folder, glob or video) or --camera, not both")
    if source is None:
        return open_camera(camera or "auto", profile, retry=retry, on_problem=on_problem)
    return open_path(source, on_problem=on_problem)


def open_path(source: str, on_problem: Callable[[str], None] | None = None) -> FrameSource:
    path = Path(source).expanduser()
    what = ("Give an image, a folder of images, a glob such as 'smears/*.png' (quoted), or a video file; "
            "or use --camera for a live camera.")
    if not path.exists() and any(ch in source for ch in "*?["):
        matches = sorted(glob_files(os.path.expanduser(source)), key=_natural_key)
        images = _once([p for p in matches if p.suffix.lower() in IMAGE_SUFFIXES])
        if not images:
            raise SourceError(f"the pattern '{source}' matches no image files "
                              f"({', '.join(sorted(IMAGE_SUFFIXES))}). {what}")
        return ImageFilesSource(images, source, on_problem)
    if not path.exists():
        raise SourceError(f"{path} does not exist. {what}")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path} is not readable by this user; fix its permissions (chmod o+r) or copy it. {what}")
    if path.is_dir():
        images = _once(sorted((p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                               and not p.name.startswith(".")), key=_natural_key))
        if not images:
            raise SourceError(f"the folder {path} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); "
                              f"images in sub-folders are not read: point at the sub-folder or use a glob "
                              f"such as '{path}/**/*.png'")
        return ImageFilesSource(images, str(path), on_problem)
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return ImageFilesSource([path], str(path), on_problem)
    if suffix in VIDEO_SUFFIXES:
        return VideoFileSource(path, on_problem)
    raise SourceError(f"{path}: unknown file type '{suffix or 'no suffix'}'. Images: {', '.join(sorted(IMAGE_SUFFIXES))}; "
                      f"videos: {', '.join(sorted(VIDEO_SUFFIXES))}.")


def open_camera(camera: str, profile: CameraProfile | None = None, *, retry: RetryPolicy | None = None,
                on_problem: Callable[[str], None] | None = None, platform: str | None = None) -> FrameSource:
    profile = profile or CameraProfile()
    spec = camera.strip().lower()
    if spec == "auto":
        platform = platform or detect_platform()
        spec = {"raspberry-pi": "pi", "jetson": "jetson"}.get(platform, "0")
        log.info("--camera auto on %s: using %s", platform, spec)
    if spec in ("pi", "picamera", "picamera2", "libcamera"):
        return PiCameraSource(profile, retry=retry, on_problem=on_problem)
    if spec == "jetson" or spec.startswith("jetson:") or spec in ("csi", "nvargus"):
        sensor = spec.split(":", 1)[1] if ":" in spec else "0"
        if not sensor.isdigit():
            raise SourceError(f"--camera {camera}: the Jetson sensor id must be a number, e.g. jetson:1")
        if not opencv_has_gstreamer():
            raise CameraDriverMissingError("this OpenCV was built without GStreamer, which the Jetson CSI camera needs "
                              "(pip wheels lack it). Use JetPack's OpenCV: create the venv with "
                              "--system-site-packages and do not pip-install opencv there; or use a USB camera "
                              "with --camera 0.")
        pipeline = jetson_pipeline(profile, int(sensor))
        return OpenCVCameraSource(f"jetson-csi{sensor}", lambda: cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER),
                                  profile, configure=False, retry=retry, on_problem=on_problem)
    if spec.isdigit() or spec.startswith("/dev/"):
        device: int | str = int(spec) if spec.isdigit() else camera.strip()
        backend = cv2.CAP_V4L2 if os.name == "posix" and os.uname().sysname == "Linux" else cv2.CAP_ANY
        label = f"usb{device}" if isinstance(device, int) else str(device)
        return OpenCVCameraSource(label, lambda: cv2.VideoCapture(device, backend), profile,
                                  retry=retry, on_problem=on_problem)
    raise SourceError(f"--camera {camera}: not understood. Use auto, pi, jetson (or jetson:<sensor-id>), "
                      f"a V4L2 device number such as 0, or a device path such as /dev/video2.")


def glob_files(pattern: str) -> list[Path]:
    """Files matching a glob; `**` matches any depth of folders but never follows a symbolic link
    to a folder (so a link loop cannot make it walk forever). Hidden names match only a pattern
    part that starts with '.', as in `glob`."""
    if "**" not in pattern:
        return [Path(p) for p in glob.glob(pattern) if os.path.isfile(p)]
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if any(ch in part for ch in "*?["))
    base = Path(*parts[:fixed]) if fixed else Path(".")
    wanted = parts[fixed:]
    found = []
    for folder, dirs, files in os.walk(base, followlinks=False):
        rel = Path(folder).relative_to(base).parts
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            path = Path(folder, name)
            if _match_parts((*rel, name), wanted) and path.is_file():
                found.append(path if fixed else Path(os.path.relpath(path)))
    return found


def _match_parts(parts: tuple[str, ...], pattern: tuple[str, ...]) -> bool:
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return _match_parts(parts, pattern[1:]) or (bool(parts) and _match_parts(parts[1:], pattern))
    if not parts or (parts[0].startswith(".") and not pattern[0].startswith(".")):
        return False
    return fnmatch.fnmatchcase(parts[0], pattern[0]) and _match_parts(parts[1:], pattern[1:])


def _once(paths: list[Path]) -> list[Path]:
    """Each file once: a second path to the same file (a link, a repeated match) is dropped."""
    seen, out = set(), []
    for p in paths:
        try:
            st = p.stat()
        except OSError:
            out.append(p)  # dangling: reading it reports the problem
            continue
        if (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            out.append(p)
    return out


def _natural_key(path: Path) -> list:
    """frame2.png before frame10.png."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", str(path))]
