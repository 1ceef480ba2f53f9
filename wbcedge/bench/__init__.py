"""`wbcedge bench`: the runner that starts one fresh worker process per configuration, the
worker, machine information, floors and the tables. Device side: only the worker's Keras
baseline (run when a training run is found) imports TensorFlow.
"""

from wbcedge.errors import WbcedgeError

KERAS = "keras"                    # the backend name of the Keras baseline row (predict_on_batch)
RESULT_FORMAT = "wbcedge-bench"    # the "format" field of a saved bench JSON
RESULT_VERSION = 1


class BenchError(WbcedgeError):
    """A benchmark that cannot run as asked; the message says what to change."""
