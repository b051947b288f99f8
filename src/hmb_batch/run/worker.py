"""Two threads for a stage: the worker computes the next item while the caller writes."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

_T = TypeVar("_T")
_R = TypeVar("_R")


def one_ahead(items: Iterable[_T], compute: Callable[[_T], _R]) -> Iterator[_R]:
    """``compute(item)`` for each of ``items``, in order, in one worker thread running one item
    ahead of the caller: while the caller writes item k's result, the worker computes item
    k + 1.

    Why: the kernel's queries and the writes of their results each leave one of the machine's
    cores idle much of the time (a bucket's queries are small, pyarrow's Parquet writer is
    single-threaded); Polars, pyarrow and DuckDB release the GIL, so the two overlap. The
    results come back in the items' order, so every file is written as without the worker.
    Two items' work is in memory at once, and the next item's input as it is read (the
    buckets' sizes allow for it: :data:`hmb_batch.run.buckets.IN_FLIGHT`). An exception in
    ``compute`` is raised here, once the item after it (which may have started) is done; no
    later item is started.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hmb-kernel") as pool:
        pending: Future[_R] | None = None
        try:
            for item in items:
                submitted = pool.submit(compute, item)
                del item  # the worker holds it; the next item is read meanwhile
                if pending is not None:
                    yield pending.result()
                pending = submitted
            if pending is not None:
                yield pending.result()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
