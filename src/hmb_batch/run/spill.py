"""A run's spill area: the only place temporary copies of input data (and bucket files) live."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from hmb_batch.errors import OutputUnwritable

SPILL_PREFIX = ".hmb-spill-"


@contextlib.contextmanager
def spill_area(out_dir: Path) -> Iterator[Path]:
    """This run's temporary folder, ``.hmb-spill-PID`` inside the output folder, removed at the
    end whatever happens; spill folders of runs that are gone (killed) are removed first.

    Every temporary copy of input data (a GBK file's UTF-8 copy, bucket files) lives here,
    never in the system's temp folder, so personal data a killed run left behind is found and
    removed by the next run of any kind in that folder. Creating it is also the check that the
    output folder can be written, before anything is read or applied (exit 3).
    """
    _remove_stale_spills(out_dir)
    spill = out_dir / f"{SPILL_PREFIX}{os.getpid()}"
    created = not out_dir.exists()
    try:
        shutil.rmtree(spill, ignore_errors=True)
        spill.mkdir(parents=True)
        probe = spill / ".writable"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputUnwritable(
            f"the output folder {out_dir} cannot be written ({exc.strerror or exc}); "
            "nothing was read or applied. Give --out a folder this user can write"
        ) from None
    try:
        yield spill
    finally:
        shutil.rmtree(spill, ignore_errors=True)
        if created:  # a run that wrote nothing (refused early) leaves no empty folder behind
            with contextlib.suppress(OSError):
                out_dir.rmdir()


def _remove_stale_spills(out_dir: Path) -> None:
    """Remove spill folders of runs that are gone (killed)."""
    remove_stale_folders(out_dir, SPILL_PREFIX)


def remove_stale_folders(out_dir: Path, prefix: str) -> None:
    """Remove the folders ``PREFIX<pid>[-...]`` in ``out_dir`` whose run (process ``pid`` on
    this machine) is gone: a killed run's temporary copies of input data do not stay."""
    if not out_dir.is_dir():
        return
    for folder in out_dir.glob(f"{prefix}*"):
        pid = folder.name.removeprefix(prefix).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
