"""One parallel map for the whole package, safe to call after TensorFlow is initialised."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor

import cv2


def _worker_init() -> None:
    cv2.setNumThreads(1)  # one process per core already; OpenCV threads would only contend


def parallel_map(fn: Callable, items: list, workers: int | None = None, chunksize: int = 16) -> Iterator:
    """`map(fn, items)` in order, over all cores unless `workers` says otherwise.

    Workers come from a fork server, never a fork of this process: forking a process
    that runs threads (a rich progress bar, OpenCV, TensorFlow) can hang the children.
    As with any multiprocessing code, a script that calls this needs the
    `if __name__ == "__main__":` guard; `workers=1` runs in this process instead.
    """
    workers = min(workers or os.cpu_count() or 1, len(items))
    if workers <= 1:
        yield from map(fn, items)
        return
    if os.name == "posix":
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])  # workers start with OpenCV already imported
    else:
        context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_worker_init) as pool:
        yield from pool.map(fn, items, chunksize=chunksize)
