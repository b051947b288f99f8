"""Writing output files atomically: a temporary name in the target folder, then a rename.

A reader (the payment system picking up payouts.parquet) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from hmb_batch.crash import crash_point


def write_files(files: dict[str, bytes], out_dir: Path) -> dict[str, Path]:
    """Write output files atomically (temporary name in the same folder, then rename)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, content in files.items():
        target = out_dir / name
        tmp = out_dir / f".{name}.{os.getpid()}.tmp"
        tmp.write_bytes(content)
        crash_point("outputs")
        os.replace(tmp, target)
        written[file_key(name)] = target
    return written


def copy_files(files: Mapping[str, Path], out_dir: Path) -> dict[str, Path]:
    """Copy files into ``out_dir`` under the given names, atomically (see :func:`write_files`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, source in files.items():
        target = out_dir / name
        tmp = out_dir / f".{name}.{os.getpid()}.tmp"
        shutil.copyfile(source, tmp)
        crash_point("outputs")
        os.replace(tmp, target)
        written[file_key(name)] = target
    return written


def file_key(name: str) -> str:
    stem, _, ext = name.partition(".")
    return stem + (f"_{ext}" if ext in ("csv", "md") else "")


def install_files(staged: dict[str, Path], out_dir: Path) -> dict[str, Path]:
    """Move files assembled in the spill folder (same file system) into place, atomically."""
    written = {}
    for name, path in staged.items():
        target = out_dir / name
        crash_point("outputs")
        os.replace(path, target)
        written[file_key(name)] = target
    return written
