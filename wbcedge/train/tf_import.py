"""Import TensorFlow and Keras once, without the notices they print on import.

TensorFlow writes its oneDNN and CPU-feature notices to fd 2 from C++ even with
TF_CPP_MIN_LOG_LEVEL=3 (stack notes, trap 7); `import_tensorflow()` drops exactly those
lines and lets anything else (a real import error) through.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    """The `tensorflow` module, imported quietly the first time."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules and "keras" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    from wbcedge.quiet import TENSORFLOW_NOTICES, quiet_fds

    with quiet_fds(drop=TENSORFLOW_NOTICES):
        import keras  # noqa: F401
        import tensorflow
    return tensorflow
