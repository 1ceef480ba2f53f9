"""Native libraries that talk on the process's file descriptors, kept off the user's console.

TensorFlow prints oneDNN and CPU-feature notices on import, the converters print hundreds
of "Captures" lines, LiteRT announces its XNNPACK delegate on every interpreter. These come
from C++ writing to fd 1/2 directly, so Python's `sys.stdout` redirection cannot catch them:
    with quiet_fds(drop=XNNPACK_NOTICE):      # drop known notices, pass anything else through
        interpreter.allocate_tensors()
    with quiet_fds(log=out / "export.log"):   # everything into a log file
        converter.convert()
Anything not dropped is written back to stderr, so a real error still reaches the user.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

XNNPACK_NOTICE = (r"^INFO: Created TensorFlow Lite XNNPACK delegate",)
TENSORFLOW_NOTICES = (r"^WARNING: All log messages before absl::InitializeLog\(\)",
                      r"^I\d{4} .*\] oneDNN custom operations are on",
                      r"^I\d{4} .*cpu_feature_guard", r"^To enable the following instructions",
                      r"^W\d{4} .*cuda", r"^E\d{4} .*(cuda|cuDNN|cuFFT|cuBLAS)",
                      r"^I\d{4} .*(cuda|gpu_device|service\.cc|TensorFlow Lite|tf_tfl_flatbuffer)")


@contextmanager
def quiet_fds(drop: tuple[str, ...] = (), log: Path | None = None, stdout: bool = False) -> Iterator[None]:
    """Capture fd 2 (and fd 1 with `stdout=True`) while the block runs.

    With `log`, everything captured is appended to that file; without, lines matching a
    `drop` pattern are discarded and every other line goes back to stderr.
    """
    fds = [2] + ([1] if stdout else [])
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    saved = {fd: os.dup(fd) for fd in fds}
    with tempfile.TemporaryFile() as capture:
        try:
            for fd in fds:
                os.dup2(capture.fileno(), fd)
            yield
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
            if log is not None:
                with open(log, "a", encoding="utf-8") as f:
                    f.write(text)
            else:
                patterns = [re.compile(p) for p in drop]
                kept = [line for line in text.splitlines(keepends=True)
                        if not any(p.search(line) for p in patterns)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()
