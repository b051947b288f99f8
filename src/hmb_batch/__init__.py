"""hmb-batch: batch claims for city-customised supplementary medical insurance (惠民保)."""

import os
from importlib.metadata import PackageNotFoundError, version

# Return freed memory to the OS within 100 ms (Polars' jemalloc; Arrow's jemalloc pool, whose
# decay hmb_batch.run.buckets sets), so resident memory tracks what a run holds and
# --memory-limit means what it says. Measured on 2M fee lines in 7 buckets: decay 0 took
# 21.6 s / 693 MB, 100 ms 16.4 s / 702 MB, jemalloc's default 10 s 14.9 s / 1,268 MB. Set
# before Polars or PyArrow is first imported; a caller's own settings win.
os.environ.setdefault("_RJEM_MALLOC_CONF", "dirty_decay_ms:100,muzzy_decay_ms:0")
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc")

try:
    __version__ = version("hmb-batch")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0"
