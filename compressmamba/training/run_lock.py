"""One run per folder at a time: ``RUN_DIR/.run.lock``, held for the run's life.

The lock is an exclusive ``flock`` on the file (the kernel drops it when its process dies, however
it dies) and the file names its holder (host, pid, start time). A second run into a busy folder is
refused in one line naming the holder and the file; a lock file whose process is gone (no
``flock`` on it any more) is stale and is taken over, with a note. Where the filesystem cannot
``flock``, a holder on this host whose pid is gone counts as stale, and any other as live.

Within one process the lock is re-entrant (a Trainer built to inspect a run, then another that
trains it), so it guards against other processes, not threads. Under several ranks only the main
process takes it (``RunFolder._claim_run_dir``) and tells the others the outcome.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sys
import time
from pathlib import Path

LOCK_NAME = ".run.lock"
_HELD: dict[str, list] = {}  # resolved lock path -> [fd, holders]: re-entrant within this process


class RunFolderBusy(FileExistsError):
    """Another live run holds the run folder's lock (one line: the folder, the holder, the file)."""


def _holder(path: Path) -> dict:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError, OverflowError):
        return True  # someone else's process, or a pid we cannot read: assume it lives
    return True


def _try_flock(fd: int, info: dict) -> bool:
    """An exclusive non-blocking flock on ``fd``; where flock is not supported, judge the
    recorded holder ``info`` instead (live unless on this host with its pid gone)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        fcntl = None
    try:
        if fcntl is None:
            raise OSError(errno.ENOLCK, "no flock")
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError:
        same_host = info.get("host") == socket.gethostname()
        return not info or (same_host and not _pid_alive(info.get("pid")))


def _busy(run_dir: Path, path: Path, info: dict) -> RunFolderBusy:
    since = f", since {info['started']}" if info.get("started") else ""
    return RunFolderBusy(
        f"run folder {run_dir} is busy: another run holds its lock {path} (host {info.get('host', '?')}, "
        f"pid {info.get('pid', '?')}{since}); wait for it to end, or write elsewhere with out_dir=NEW_FOLDER"
    )


def acquire(run_dir: str | Path) -> Path:
    """Take ``run_dir``'s lock (creating the folder) for this process; returns the lock file.
    Raises :class:`RunFolderBusy` when a live run of another process holds it."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    key = str(path.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        return path
    for _ in range(10):  # the file may be replaced between open and flock: retry on the new one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        info = _holder(path)
        if not _try_flock(fd, info):
            os.close(fd)
            raise _busy(run_dir, path, info)
        try:
            same_file = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)
    else:
        raise RunFolderBusy(f"run folder {run_dir}: could not take its lock {path} (it keeps being replaced)")
    if info.get("pid") not in (None, os.getpid()):
        print(f"compressmamba: took over the stale lock {path} of host {info.get('host', '?')} pid "
              f"{info.get('pid')} (that run is no longer running)", file=sys.stderr)  # fmt: skip
    mine = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(mine).encode(), 0)
    _HELD[key] = [fd, 1]
    return path


def release(path: str | Path | None) -> None:
    """Give back one hold of the lock at ``path`` (from :func:`acquire`); the last one removes
    the file and drops the flock. Safe to call twice, or with None."""
    if path is None:
        return
    key = str(Path(path).resolve())
    held = _HELD.get(key)
    if held is None:
        return
    held[1] -= 1
    if held[1] > 0:
        return
    del _HELD[key]
    try:
        Path(path).unlink(missing_ok=True)  # before the flock drops: a newcomer locks a new file
    finally:
        os.close(held[0])
