"""Jobs with dependencies in worker processes: ``Task`` and ``run_tasks``.

The demo and the replication train and evaluate several models on a few cores. For models this
small, several processes of one torch thread each get more done than one process of several
threads, so each job runs in a worker process as soon as the jobs it reads are done.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["Task", "run_tasks"]


@dataclass(frozen=True)
class Task:
    """One job: ``fn(*args)`` in a worker, under ``key`` in the results."""

    key: str
    fn: Callable[..., Any]
    """A module-level function (the workers are spawned: it is pickled by name)."""
    args: tuple[Any, ...] | Callable[[dict[str, Any]], tuple[Any, ...]]
    """The arguments, or a function of the finished tasks' results that gives them."""
    after: tuple[str, ...] = ()
    """Keys of the tasks whose outputs this one reads (it starts once they are done)."""


class _InlineExecutor:
    """A ProcessPoolExecutor stand-in that runs jobs at submission (one worker)."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future:
        f: Future = Future()
        f.set_result(fn(*args))
        return f

    def shutdown(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_tasks(
    tasks: Sequence[Task], *, workers: int, threads: int,
    on_done: Callable[[str, Any], None] = lambda key, result: None,
) -> dict[str, Any]:  # fmt: skip
    """Run ``tasks`` in ``workers`` spawned processes of ``threads`` torch threads each (in this
    process when ``workers <= 1``), each as soon as the tasks it comes after are done, the earlier
    in the list first; ``on_done(key, result)`` as each finishes. Returns {key: result}."""
    if workers <= 1:
        torch.set_num_threads(threads)
        pool: Any = _InlineExecutor()
    else:
        pool = ProcessPoolExecutor(max_workers=workers,
                                   mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_init_worker, initargs=(threads,))  # fmt: skip
    slots = max(workers, 1)
    done: dict[str, Any] = {}
    pending = list(tasks)
    running: dict[Future, str] = {}
    try:
        while pending or running:
            for task in list(pending):
                if len(running) >= slots:
                    break
                if all(k in done for k in task.after):
                    pending.remove(task)
                    args = task.args(done) if callable(task.args) else task.args
                    running[pool.submit(task.fn, *args)] = task.key
            if not running:
                raise RuntimeError(f"tasks wait on tasks that do not exist: {pending}")
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                key = running.pop(future)
                done[key] = future.result()
                on_done(key, done[key])
    finally:
        pool.shutdown()
    return done
