"""A test hook: kill this process at a named stage of a batch (the crash-safety tests).

``HMB_TEST_CRASH_AT=<stage>`` in the environment makes :func:`crash_point` SIGKILL the process
when the batch reaches that stage (read, compute, outputs, commit); without it, nothing happens.
"""

from __future__ import annotations

import os
import signal

CRASH_ENV = "HMB_TEST_CRASH_AT"


def crash_point(stage: str) -> None:
    """Kill the process at ``stage`` when the test hook asks for it."""
    if os.environ.get(CRASH_ENV) == stage:
        os.kill(os.getpid(), signal.SIGKILL)
