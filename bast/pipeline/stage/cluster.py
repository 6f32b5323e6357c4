"""Where a stage's tasks run: a dask cluster (a LocalCluster of worker processes by default,
or an existing scheduler), or in this process for debugging."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Callable, Iterable, Iterator

from bast import options
from bast.errors import StageError

# Jobs smaller than this many samples run in this process unless workers are asked for:
# starting a LocalCluster (worker processes, their imports) costs more than it saves.
# Measured on 2 cores (docs/performance.md, "small jobs").
SMALL_JOB_SAMPLES = {"spatialize": 10_000, "featurize": 10_000, "scenes": 40}  # scenes: scene renders
CONNECT_TIMEOUT_S = 20  # how long to wait for a --scheduler to answer


def small_job(stage: str, samples: int, workers: int | None = None, scheduler: str | None = None) -> bool:
    """True when `samples` of `stage` are better done in this process: no cluster was asked
    for (no --workers, no --scheduler) and the job is under SMALL_JOB_SAMPLES."""
    return workers is None and scheduler is None and samples < SMALL_JOB_SAMPLES.get(stage, 0)


def where_tasks_run(client) -> str:
    """Where tasks run, for the user: 'in this process' or 'on dask (N workers)'."""
    if client is None:
        return "in this process"
    return f"on dask ({len(client.scheduler_info()['workers'])} workers)"


@contextlib.contextmanager
def open_client(workers: int | None = None, scheduler: str | None = None) -> Iterator[object | None]:
    """A dask Client: on `scheduler` (tcp://host:port) if given, else on a LocalCluster of
    `workers` processes with one thread each (HDF5 and FFT work do not share a GIL well).
    `workers=0` yields None: tasks then run in this process, one after another."""
    workers, scheduler = options.workers(workers), options.scheduler(scheduler)
    if scheduler is None and workers == 0:
        yield None
        return
    import dask
    from distributed import Client, LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)
    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError) as exc:  # refused, unknown host, nobody answering
            raise StageError(f"--scheduler {scheduler}: cannot reach a dask scheduler there ({exc}); "
                             "start one (dask scheduler) or leave --scheduler out to run locally") from None
        with client:
            yield client
        return
    n = workers or os.cpu_count() or 1
    # dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers. Any explicit value turns off
    # glibc's adaptive mmap threshold, so every large temporary array is mmapped and
    # page-faulted afresh: our workers spent 2-3x longer, two thirds of it in the kernel
    # (measured). None unsets it, leaving glibc's adaptive default.
    dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None})
    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def run_tasks(fn: Callable, tasks: Iterable, client=None, key: Callable | None = None) -> Iterator[tuple[object, object, BaseException | None]]:
    """Run fn(task) for each task; yield (task, result, error) as each finishes.

    On a dask client each task is one future (the task object holds paths, not arrays);
    an exception on a worker comes back as `error` so the caller can report it and go on.
    """
    tasks = list(tasks)
    if client is None:
        for task in tasks:
            try:
                yield task, fn(task), None
            except Exception as exc:  # reported by the caller, like a worker's failure
                yield task, None, exc
        return
    from distributed import as_completed

    futures = {}
    for task in tasks:
        future = client.submit(fn, task, key=key(task) if key else None, pure=False)
        futures[future] = task
    for future in as_completed(futures):
        task = futures.pop(future)
        if future.status == "error":
            yield task, None, future.exception()
        else:
            yield task, future.result(), None


def execute(fn: Callable, tasks: Iterable, client, on_result: Callable, key: Callable, name: Callable) -> list[str]:
    """Run every task, hand each result to `on_result(task, result)` as it arrives, and
    return one readable line per task that failed (the others still run to the end)."""
    errors = []
    for task, result, error in run_tasks(fn, tasks, client, key=key):
        if error is not None:
            errors.append(f"{name(task)}: {type(error).__name__}: {error}")
        else:
            on_result(task, result)
    return errors
