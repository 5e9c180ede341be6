"""Atomic file writes, the one implementation: a file is written to a temp file beside it,
fsynced, then renamed over the target, so a crash mid-write leaves the previous file intact.
Checkpoints, config.yaml, metrics and summaries, the token store's manifest, the ListOps
release files and copied recipes all write through here; folders built whole beside their
place (the run's ``model/``, the token store and its splits) are swapped in by
:func:`publish_folder`. A leaf: it imports nothing of the library."""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def _stale_temps(path: Path) -> list[Path]:
    return [p for p in path.parent.glob(f".{path.name}.*.tmp") if p.is_file()]


def atomic_write(path: str | Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` (a readable, seekable binary file) on a temp file in ``path``'s
    folder (created if needed), fsync, then os.replace. The file gets the permissions the user's
    umask gives (like ``open``), and temp files left by an earlier killed write are removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for old in _stale_temps(path):
        old.unlink(missing_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    data = text.encode(encoding)
    atomic_write(path, lambda f: f.write(data))


def publish_folder(tmp: str | Path, final: str | Path, *, replace: bool) -> bool:
    """Put the complete folder ``tmp`` (built beside ``final``, on the same filesystem) at
    ``final`` by renames, so a reader sees the old folder or the new one, never a mix.
    ``replace``: an existing ``final`` is moved aside, then removed. Otherwise the first folder
    published wins: when ``final`` already exists (another process built the same content),
    ``tmp`` is removed. Returns whether ``tmp`` became ``final``."""
    tmp, final = Path(tmp), Path(final)
    old = None
    if replace and final.exists():
        old = final.with_name(f".{final.name}.{secrets.token_hex(4)}.old")
        final.rename(old)
    try:
        os.rename(tmp, final)
    except OSError:
        if replace or not final.exists():
            if old is not None:
                old.rename(final)
            raise
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return True
