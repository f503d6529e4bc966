"""The run lock: `run.lock` in a study directory while a `dsearch run` holds it (one driver at a time)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import UserError

LOCK_FILE = "run.lock"


class StudyLock:
    """`run.lock` in the study directory while a run holds it; a stale lock (dead pid) is taken over."""

    def __init__(self, study_dir: Path) -> None:
        self.path = Path(study_dir) / LOCK_FILE

    def holder(self) -> int | None:
        """The pid of a live process holding the lock, else None."""
        try:
            pid = int(self.path.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return pid
        return pid

    def acquire(self) -> None:
        pid = self.holder()
        if pid is not None and pid != os.getpid():
            raise UserError(f"{self.path.parent} is in use by a running `dsearch run` (pid {pid}); "
                            f"wait for it, or stop it (kill {pid})")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.path)

    def release(self) -> None:
        if self.holder() == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "StudyLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

