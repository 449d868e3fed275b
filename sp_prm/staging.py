"""Safe writes: one writer per output (a lock), and outputs staged next to their place, then renamed in.

* :func:`output_lock` -- an exclusive, non-blocking ``flock`` on ``.<name>.lock`` beside the output. A
  second run into the same output fails at once with :class:`~sp_prm.errors.OutputExistsError` naming
  the pid that holds it (it does not wait). The operating system drops the lock when its process
  dies, even by ``kill -9``, so a stale lock file never blocks the next run.
* :func:`publish_files` -- move every file of a finished staging folder into a folder that also holds
  other things (a training run's checkpoints): each rename is atomic, and the files that make a folder
  loadable (``config.json``, ``adapter_config.json``) are removed first and moved last, so a kill
  leaves either no loadable model or the complete new one, never a half-written one.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sp_prm.errors import OutputExistsError

# Files whose presence makes a folder look like a loadable model: published last.
MARKERS = ("adapter_config.json", "config.json")


def lock_path(target: Path) -> Path:
    return target.parent / f".{target.name}.lock"


@contextmanager
def output_lock(target: Path, command: str) -> Iterator[Path]:
    """Hold an exclusive lock on ``target`` (its parent is created) for the duration of the block."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (documented); everything else still works
        yield target
        return
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    path = lock_path(target)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputExistsError(
                f"{target} is being written by another `sp-prm {command}` (pid {holder}; lock {path})",
                hint="wait for it to finish, or choose another output folder",
            ) from None
        # The previous holder unlinks the file on release; if that happened between our open and our
        # flock we hold a lock on a file nobody else will see: start over on the current one.
        try:
            current = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if current:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    try:
        yield target
    finally:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.close(fd)


def publish_files(staging: Path, target: Path) -> None:
    """Move the files (and subfolders) of ``staging`` into ``target``, markers last; remove ``staging``."""
    staging, target = Path(staging), Path(target)
    target.mkdir(parents=True, exist_ok=True)
    names = sorted(p.name for p in staging.iterdir())
    for name in MARKERS:  # the old model stops looking loadable before any of its files is replaced
        if (target / name).exists() and (staging / name).exists():
            os.remove(target / name)
    for name in [n for n in names if n not in MARKERS] + [n for n in MARKERS if n in names]:
        dest = target / name
        if dest.is_dir() and not dest.is_symlink():
            shutil.rmtree(dest)
        os.replace(staging / name, dest)
    shutil.rmtree(staging, ignore_errors=True)
