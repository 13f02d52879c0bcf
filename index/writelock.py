"""One writer per store: an exclusive lock on STORE/.writer.lock that names its holder.

The lock is `flock` on an open file, so the kernel drops it when the holder exits, however it
exits (SIGKILL included): a killed job never leaves a stale lock behind. The holder writes its
pid and start time into the lock file so that a second writer can say who is in its way.
Readers never take the lock: serving and training read a store while a job grows it.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_NAME = ".writer.lock"


class WriterLock:
    """The exclusive write lock of the store folder `root`; `acquire` it, then `release`."""

    def __init__(self, root: Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self, wait: bool = False) -> bool:
        """Takes the lock; gives False if another process holds it and `wait` is off, else waits for it."""
        import fcntl  # POSIX only, like the rest of the writer; imported here so readers never need it

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: that would erase the holder's name
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                os.close(fd)
                return False
            log.warning("waiting for %s to finish writing %s", self.holder(), self.path.parent)
            fcntl.flock(fd, fcntl.LOCK_EX)  # blocks in the kernel until the holder releases or dies
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        since = time.strftime("%Y-%m-%d %H:%M:%S %z")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "since": since}).encode(), 0)
        return True

    def holder(self) -> str:
        """Gives "pid N since T" for the process holding the lock, as it wrote itself down."""
        try:
            info = json.loads(self.path.read_text())
            return f"pid {int(info['pid'])} since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"  # it has the lock but has not written its name yet

    def release(self) -> None:
        """Gives the lock up (closing its file is what releases a flock); safe to call twice."""
        if self._fd is None:
            return
        os.ftruncate(self._fd, 0)  # before unlocking, so the next holder's name is never erased
        os.close(self._fd)
        self._fd = None


def lock_for_writing(root: Path, wait: bool, error: type[Exception]) -> WriterLock:
    """Gives the store's write lock, taken; raises `error` naming the holder when another process has it."""
    writer = WriterLock(root)
    try:
        taken = writer.acquire(wait)
    except OSError as exc:
        raise error(f"cannot write to store {root} ({exc}); embed into a folder you may write to") from exc
    if not taken:
        raise error(f"store {root} is being written by {writer.holder()}; let that job finish, "
                    "or pass --wait to start when it does")
    return writer
