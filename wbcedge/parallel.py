"""One parallel map for the whole package, safe to call after TensorFlow is initialised.

Data indexing, checking, augmentation and `preprocess.load_inputs` (training, calibration,
evaluation) all use `parallel_map`; nothing else starts a process pool.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import cv2


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would only contend


def parallel_map(fn: Callable, items: list, workers: int | None = None, chunksize: int = 16) -> Iterator:
    """`map(fn, items)` in order, over all cores unless `workers` says otherwise.

    Workers come from a fork server or spawn (`pool_context`), never a fork of this process:
    forking a process that runs threads (a rich progress bar, OpenCV, TensorFlow) can hang
    the children.
    As with any multiprocessing code, a script that calls this needs the
    `if __name__ == "__main__":` guard; `workers=1` runs in this process instead.
    """
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=pool_context(), initializer=_worker_init) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)


def pool_context() -> multiprocessing.context.BaseContext:
    """spawn once TensorFlow is imported (no process may inherit its threads or state), else a fork server.

    A fork server is one clean process started at the first call and forked from then on:
    as safe as spawn and faster to start workers. Where TensorFlow is already in the
    process (training, export calibration), spawn makes each worker a fresh interpreter
    that never touches TensorFlow's state at all.
    """
    if os.name != "posix" or "tensorflow" in sys.modules:
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])  # workers start with OpenCV already imported
    return context
