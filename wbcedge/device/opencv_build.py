"""Which OpenCV this process uses, and whether it can show a window and read a GStreamer camera.

Pi OS and JetPack ship an OpenCV with GUI (GTK/Qt) and GStreamer support; pip's
`opencv-python-headless` has neither, and installed into a venv made with
`--system-site-packages` it hides the system one. `wbcedge run --show` and
`--camera jetson` say at start which OpenCV is in use (`describe()`), and refuse early,
with the fix, when it lacks what they need (`check_for(show=..., gstreamer=...)`).
Install with the `device-system-cv` extra on those machines to keep the system OpenCV.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from wbcedge.errors import MissingDependencyError

PIP_WHEELS = ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")


@dataclass(frozen=True)
class OpenCVBuild:
    version: str
    path: str
    wheel: str | None       # the pip distribution that installed it; None: a system (apt/JetPack) build
    gui: str | None         # e.g. "GTK3", "QT5"; None: no GUI (headless)
    gstreamer: bool

    def describe(self) -> str:
        origin = f"pip wheel {self.wheel}" if self.wheel else "system build"
        return (f"OpenCV {self.version} ({origin}, {self.path}): GUI {self.gui or 'none'}, "
                f"GStreamer {'yes' if self.gstreamer else 'no'}")


def parse_build_information(info: str) -> tuple[str | None, bool]:
    """(GUI backend or None, GStreamer on?) from `cv2.getBuildInformation()` text."""
    gui = None
    section = re.search(r"^[ \t]*GUI:[ \t]*(\S*)(.*?)(?=^[ \t]*\S[^:\n]*:[ \t]*$|\Z)", info, re.MULTILINE | re.DOTALL)
    if section:
        head = section.group(1).strip()
        if head and head.upper() not in ("NONE", "NO"):
            gui = head
        else:
            for name, value in re.findall(r"^[ \t]*(GTK[^:\n]*|QT[^:\n]*|Win32 UI|Cocoa|WAYLAND|Framebuffer)[ \t]*:[ \t]*(\S+)",
                                          section.group(2), re.MULTILINE):
                if value.upper().startswith("YES") or re.match(r"\d", value):
                    gui = name.strip()
                    break
    match = re.search(r"GStreamer:\s*(\S+)", info)
    gstreamer = bool(match) and match.group(1).upper() != "NO"
    return gui, gstreamer


def current() -> OpenCVBuild:
    import cv2

    gui, gstreamer = parse_build_information(cv2.getBuildInformation())
    path = str(Path(cv2.__file__).resolve().parent)
    return OpenCVBuild(cv2.__version__, path, _wheel_of(path), gui, gstreamer)


def check_for(show: bool = False, gstreamer: bool = False, build: OpenCVBuild | None = None) -> OpenCVBuild:
    """The OpenCV in use, or a `MissingDependencyError` naming what it lacks and how to get the system one."""
    build = build or current()
    missing = [what for what, needed, has in (("GUI support (for --show)", show, build.gui),
                                              ("GStreamer (for the Jetson CSI camera)", gstreamer, build.gstreamer))
               if needed and not has]
    if missing:
        fix = ("this is pip's OpenCV, which hides the system one: `pip uninstall " + build.wheel + "` in this venv "
               "and reinstall with `pip install -e '.[device-system-cv]'` (a venv made with --system-site-packages "
               "sees Pi OS's / JetPack's OpenCV)" if build.wheel else
               "install an OpenCV built with it (Pi OS: `sudo apt install python3-opencv`; JetPack ships one)")
        raise MissingDependencyError(f"{build.describe()} lacks {' and '.join(missing)}: {fix}")
    return build


def _wheel_of(cv2_dir: str) -> str | None:
    from importlib import metadata

    for name in PIP_WHEELS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        files = dist.files or []
        if any(str(Path(dist.locate_file(f)).resolve()).startswith(cv2_dir) for f in files[:200]):
            return name
    return None
