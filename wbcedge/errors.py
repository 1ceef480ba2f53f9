"""One error type for everything a user, a file or a machine can get wrong.

Every expected failure raises a `WbcedgeError` (or a subclass) whose message says what
happened and what to do next. `wbcedge.cli.main` catches it once, prints one
`error: ...` line and exits with the subclass's `exit_code`; a traceback is shown only
with `--debug` or `WBCEDGE_DEBUG=1`, because a traceback is for a bug, never for bad input.

| exit | class | meaning |
|---|---|---|
| 1 | (not an error) | a check ran and failed: export gate, bench floor, data leak |
| 2 | `WbcedgeError`, `InputDataError`, `InputFileMissingError` | bad option value or bad input data |
| 3 | `CameraError` | the camera is absent or was lost during a session |
| 4 | `BundleError` | a bundle that is missing, malformed, tampered or not deployable |
| 5 | `MissingDependencyError` | a runtime or an extra that is not installed |
| 6 | `OutputFolderError` | an output folder that cannot be written or is in use |
| 7 | (not an error) | `wbcedge run --strict`: the session finished, but the domain-shift alarm fired |
"""

from __future__ import annotations


class WbcedgeError(Exception):
    """An expected failure: bad input, a bad file, a missing package. The message says what to do."""
    exit_code = 2


class InputDataError(WbcedgeError, ValueError):
    """Bad input data or option values: an image, a data manifest, a config file, a number out of range."""
    exit_code = 2


class InputFileMissingError(InputDataError, FileNotFoundError):
    """An input file or folder that does not exist (a data manifest, a run folder, a config)."""
    exit_code = 2


class CameraError(WbcedgeError):
    """A camera that is absent, cannot be opened, or stopped delivering frames."""
    exit_code = 3


class BundleFormatError(WbcedgeError, ValueError):
    """A bundle that cannot be used: missing, malformed manifest, tampered file, not deployable."""
    exit_code = 4


class ModelLoadError(BundleFormatError):
    """A model file the runtime cannot load (damaged, or made for another runtime version)."""
    exit_code = 4


class MissingDependencyError(WbcedgeError, RuntimeError):
    """A model runtime or an optional extra that is not installed; the message names the pip command."""
    exit_code = 5


class OutputFolderError(WbcedgeError):
    """An output folder that cannot be created, written, or is in use by another session."""
    exit_code = 6


EXTRAS = {"tensorflow": "train", "keras": "train", "tensorboard": "train", "tf2onnx": "export", "onnx": "export",
          "sklearn": "report", "scipy": "report", "matplotlib": "report", "skimage": "report",
          "onnxruntime": "device", "ai_edge_litert": "device", "cv2": "opencv",
          "fastapi": "web", "starlette": "web", "uvicorn": "web", "jinja2": "web"}
"""Top-level module -> the pyproject extra that installs it."""


def missing_extra(exc: ImportError) -> MissingDependencyError | None:
    """A `MissingDependencyError` naming the pip command for an optional package that is not installed, else None."""
    top = (getattr(exc, "name", None) or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    where = " (the training box's extra: the device never needs it)" if extra in ("train", "export") else ""
    return MissingDependencyError(f"{top} is not installed and this command needs it: "
                                  f"pip install 'wbcedge[{extra}]'{where}")


EXIT_CODES = {
    1: "a check ran and failed (export gate, bench floor, data leak)",
    2: "bad option value or input data",
    3: "camera absent or lost",
    4: "bad bundle",
    5: "missing runtime or extra",
    6: "output folder problem",
    7: "run --strict: domain-shift alarm (cells unlike the training data)",
}

DOMAIN_SHIFT_EXIT = 7
