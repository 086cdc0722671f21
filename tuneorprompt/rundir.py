"""Safety of a run directory: whole-file writes, one run at a time, SIGTERM handled like Ctrl-C.

A run directory is re-used by design (an interrupted run resumes from its store), so these guard
the ways a re-use can go wrong: a file half-written when the process dies or the disk fills, two
runs writing into one directory, and a `kill` (a scheduler's timeout, `docker stop`) that skips the
cleanup Ctrl-C gets.

Symbolic links: the run directory itself, or any folder above it, may be a link (pointing `runs/`
at a larger disk is ordinary); a link *inside* it is refused when the run starts, before any work
(`check_no_links_inside`), and a whole-file write refuses one too. Such a link is either a mistake
or a trap planted in a shared directory (`report.html -> ~/.bashrc`, `models -> elsewhere`), and the
run has no business writing through it.

Whose directory: a run writes only into a directory that is empty, new, or a run directory of ours
(`check_run_dir_is_ours`), so `--out .` cannot replace a user's own files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
import signal
import socket
import threading
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Iterator


class RunDirError(ValueError):
    """A run directory that cannot be used as asked; the message names the path (a user error)."""


class RunInterrupted(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, so one `except KeyboardInterrupt` covers Ctrl-C and kill."""

    def __init__(self, signum: int):
        super().__init__(f"terminated by {signal.Signals(signum).name}")
        self.signum = signum


def write_text_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8) all at once: a reader, or a run that dies mid-write, sees
    the old file or the new one, never a truncated one.

    Raises RunDirError when `path` is a symbolic link, or when the disk is full (the old file is
    then left as it was)."""
    path = Path(path)
    # Only a clear message: `os.replace` renames over a link rather than writing through it, so the
    # link's target is safe even if one appears between this check and the rename.
    if path.is_symlink():
        raise RunDirError(f"{path} is a symbolic link; refusing to replace it (remove the link and run again)")
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")  # same folder; see remove_stale_temporaries
    try:
        # O_EXCL never opens an existing name (nor follows a link); 0o666 lets the umask give the
        # file the mode any other new file here would get.
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            # On disk before the rename: otherwise a crash can leave the new name on empty content.
            os.fsync(file.fileno())
        os.replace(temp, path)
    except BaseException as error:  # Ctrl-C and SIGTERM too: never leave a stray temporary file
        temp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise RunDirError(
                f"cannot write {path}: disk full (the previous {path.name}, if any, is unchanged)"
            ) from error
        raise


_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}\.tmp")  # write_text_atomic's temporary file names


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files `write_text_atomic` left in `run_dir` when a run was killed
    mid-write (`kill -9` skips its cleanup); returns them. Call it only while holding the run's lock:
    another run's temporaries are then its own, not in-flight writes."""
    stale = [Path(entry.path) for entry in os.scandir(run_dir) if entry.is_file(follow_symlinks=False)
             and _TEMPORARY.fullmatch(entry.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


class RunLock:
    """Hold `run_dir/.lock` for the length of a `with` block: a second run into the same directory
    fails at once with RunDirError naming the holder's pid, host and start time.

    The lock is an exclusive `flock`, which the OS drops when the holder dies, however it dies; the
    file's text (pid, host, start) only describes the holder and, after a crash, may name a dead
    process, so nothing reads it to decide whether the directory is free. The file is never deleted:
    a run that deleted it on exit could let the next two runs lock two different files.

    On NFS, `flock` works across hosts from Linux 2.6.12 (it is emulated with byte-range locks)."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def __enter__(self) -> RunLock:
        try:
            # O_NOFOLLOW: the holder's details are written over the file; never over a link's target.
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise RunDirError(f"{self.path} is a symbolic link; refusing to use it as the run's lock") from error
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0))
            os.close(fd)
            raise RunDirError(f"run directory {self.path.parent} is in use by {holder}") from None
        started = datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
        self._fd = fd
        return self

    def __exit__(self, *exc_info) -> None:
        # Unlock before closing: a forked child (a data loader worker) shares the descriptor, and
        # closing ours alone would leave the directory locked until that child exits.
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


# A run directory is recognised by its store: `store.sqlite` is made by the first run, right after it
# locks the directory, and no other tool is likely to name a file so. Until then a directory can hold
# only these (a run killed between locking and opening its store; the other ranks' stores under
# `accelerate launch`), so a directory holding nothing else is one of ours too.
MARKER = "store.sqlite"
_OURS_BEFORE_THE_MARKER = re.compile(r"\.lock|store\.rank\d+\.sqlite(-wal|-shm|-journal)?")


def check_run_dir_is_ours(run_dir: Path) -> None:
    """Refuse an `--out` that would overwrite someone else's files: an existing directory that is
    neither empty nor a tuneorprompt run directory (see MARKER), or a path that is not a directory.
    Reads only the directory's listing, so `--out /` or `--out ~` are refused at once."""
    run_dir = Path(run_dir)
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise RunDirError(f"run directory {run_dir} exists and is not a directory")
    names = [entry.name for entry in os.scandir(run_dir)]
    if MARKER in names or all(_OURS_BEFORE_THE_MARKER.fullmatch(name) for name in names):
        return
    raise RunDirError(
        f"run directory {run_dir} is not empty and is not a tuneorprompt run directory (it has no {MARKER}); "
        "refusing to write into it: choose a new or empty directory with --out"
    )


def check_no_links_inside(run_dir: Path) -> None:
    """Refuse a symbolic link anywhere among the run directory's own files (`store.sqlite`, `models/`,
    `report.html`, ...), naming it, before any work: the run would otherwise write through it (a
    store, an adapter) or find it only at the end. `run_dir` itself may be a link."""
    for folder, subfolders, files in os.walk(run_dir):  # never descends into a linked folder
        for name in [*subfolders, *files]:
            path = Path(folder) / name
            if path.is_symlink():
                raise RunDirError(
                    f"{path} is a symbolic link inside run directory {run_dir}; refusing to follow it "
                    "(remove the link and run again)"
                )


def check_not_in_use(run_dir: Path) -> None:
    """Raise the RunDirError `RunLock` would raise if another run holds `run_dir`'s lock, without
    creating or writing anything: a run checks this first, so a busy directory is reported at once
    rather than after the seconds of checks and model loading that come before `RunLock`.

    Only a probe: the lock itself is taken later, by `RunLock`, which reports a run that started in
    between. A missing lock file, or one that is a link (refused by `RunLock`), passes."""
    try:
        fd = os.open(Path(run_dir) / ".lock", os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(os.pread(fd, 4096, 0))
            raise RunDirError(f"run directory {run_dir} is in use by {holder}") from None
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _describe_holder(text: bytes) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']} (started {holder['started']})"
    except (ValueError, KeyError, TypeError):  # the holder locked but has not written its details yet
        return "another process"


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises RunInterrupted (a KeyboardInterrupt) in the main thread, so
    a killed run unwinds like a Ctrl-C: `finally` blocks and context managers run, the store closes.
    The previous handler is restored on exit.

    Outside the main thread it does nothing: Python runs signal handlers in the main thread only,
    and only the main thread may install them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _raise_interrupted(signum: int, frame) -> None:
    raise RunInterrupted(signum)
