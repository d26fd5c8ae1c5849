"""One writer per state folder: an exclusive flock on STATE_DIR/writer.lock, held for the life of the writer.

The kernel drops a flock when its process dies (even by SIGKILL), so a crashed or preempted run never leaves
a stale lock behind. The file records the holder's host and pid, so a refused second writer can name it.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "writer.lock"


class LockedError(RuntimeError):
    """Another live process holds the lock; the message names it."""


class WriterLock:
    def __init__(self, folder: str | Path, what: str = "training"):
        self.path = Path(folder) / LOCK_NAME
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> WriterLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(self.path)
            os.close(fd)
            raise LockedError(
                f"{self.path.parent}: another {self.what} process is writing here ({holder}); "
                "wait for it to end or stop it (the lock is released when that process exits)"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock; the file stays (removing it would race a new writer)
            self._fd = None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text())
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder["since"])))
        return f"host {holder['host']}, pid {holder['pid']}, since {since}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
