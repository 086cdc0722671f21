"""Run directory safety, with real files, real second processes and real signals."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tuneorprompt.rundir import (
    RunDirError,
    RunInterrupted,
    RunLock,
    check_not_in_use,
    terminate_as_interrupt,
    write_text_atomic,
)

ROOT = Path(__file__).resolve().parents[1]


def python(script: str, *args: str, **popen) -> subprocess.Popen:
    """A fresh interpreter running `script` with the checkout importable."""
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, text=True, **popen)


# ---- write_text_atomic ---------------------------------------------------------------------------


def test_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "report.json"
    target.write_text("old")
    write_text_atomic(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert os.listdir(tmp_path) == ["report.json"]


def test_new_file_gets_the_mode_any_new_file_gets(tmp_path):
    write_text_atomic(tmp_path / "atomic", "x")
    (tmp_path / "plain").write_text("x")
    assert (tmp_path / "atomic").stat().st_mode == (tmp_path / "plain").stat().st_mode


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlinked_file_is_refused_and_its_target_untouched(tmp_path, dangling):
    target = tmp_path / "elsewhere.txt"
    if not dangling:
        target.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.html").symlink_to(target)
    with pytest.raises(RunDirError, match=r"report\.html is a symbolic link"):
        write_text_atomic(run_dir / "report.html", "<html>")
    assert (run_dir / "report.html").is_symlink()
    if dangling:
        assert not target.exists()
    else:
        assert target.read_text() == "precious"
    assert os.listdir(run_dir) == ["report.html"]


def test_a_symlinked_run_directory_is_followed(tmp_path):
    """Pointing runs/ (or one run) at another disk is ordinary; the file lands in the real folder."""
    disk = tmp_path / "big-disk"
    disk.mkdir()
    (tmp_path / "run").symlink_to(disk, target_is_directory=True)
    write_text_atomic(tmp_path / "run" / "config.yaml", "name: x\n")
    assert (disk / "config.yaml").read_text() == "name: x\n"


def test_a_failed_write_removes_its_temporary_file(tmp_path):
    (tmp_path / "report.json").mkdir()  # the rename cannot replace a directory
    with pytest.raises(OSError):
        write_text_atomic(tmp_path / "report.json", "{}")
    assert os.listdir(tmp_path) == ["report.json"]


DISK_FULL = """
import json, os, sys
from pathlib import Path
from tuneorprompt.rundir import RunDirError, write_text_atomic
target = Path(sys.argv[1]) / "report.json"
target.write_text("old report")
try:
    write_text_atomic(target, "x" * 1_000_000)
    error = None
except RunDirError as e:
    error = str(e)
print(json.dumps({"error": error, "old": target.read_text(), "files": os.listdir(target.parent)}))
"""


def test_a_full_disk_is_one_clear_error_and_the_old_file_survives(tmp_path):
    """A real full disk: a 64 KiB tmpfs mounted in a private user and mount namespace."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a small tmpfs")
    command = f'mount -t tmpfs -o size=64k tmpfs {mount} || exit 97; exec {sys.executable} -c "$0" {mount}'
    done = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", command, DISK_FULL],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    if done.returncode == 97 or done.stderr.startswith("unshare:"):
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["error"] == (
        f"cannot write {mount}/report.json: disk full (the previous report.json, if any, is unchanged)"
    )
    assert outcome["old"] == "old report"
    assert outcome["files"] == ["report.json"]


# ---- RunLock -------------------------------------------------------------------------------------

HOLD_LOCK = """
import sys
from tuneorprompt.rundir import RunLock
with RunLock(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding the run directory's lock until its stdin closes."""
    process = python(HOLD_LOCK, str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert process.stdout.readline() == "locked\n"
    yield process
    process.kill()
    process.wait()


def test_a_second_run_fails_at_once_naming_the_holder(tmp_path, holder):
    start = time.monotonic()
    in_use = rf"run directory {tmp_path} is in use by pid {holder.pid} on \S+ \(started 20\d\d-"
    with pytest.raises(RunDirError, match=in_use):
        with RunLock(tmp_path):
            pass
    assert time.monotonic() - start < 1  # non-blocking: no waiting for the other run to end


def test_the_probe_names_the_holder_and_writes_nothing(tmp_path, holder):
    with pytest.raises(RunDirError, match=rf"run directory {tmp_path} is in use by pid {holder.pid}"):
        check_not_in_use(tmp_path)
    holder.stdin.close()
    holder.wait(timeout=10)
    check_not_in_use(tmp_path)  # free now
    check_not_in_use(tmp_path / "not-made-yet")
    assert not (tmp_path / "not-made-yet").exists()


def test_the_lock_is_free_once_the_holder_exits(tmp_path, holder):
    holder.stdin.close()
    assert holder.wait(timeout=10) == 0
    with RunLock(tmp_path):
        pass


def test_the_os_frees_the_lock_of_a_killed_run(tmp_path, holder):
    holder.send_signal(signal.SIGKILL)  # no cleanup runs; only flock's release-on-death frees it
    holder.wait(timeout=10)
    with RunLock(tmp_path):
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()


def test_the_lock_is_released_on_leaving_the_block(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunDirError, match=f"in use by pid {os.getpid()}"):
            with RunLock(tmp_path):
                pass
    with RunLock(tmp_path):
        pass


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / ".lock").symlink_to(target)
    with pytest.raises(RunDirError, match=r"\.lock is a symbolic link"):
        with RunLock(run_dir):
            pass
    assert target.read_text() == "precious"


# ---- terminate_as_interrupt ----------------------------------------------------------------------

LOOP_UNTIL_TERMINATED = """
import signal, time
from tuneorprompt.rundir import RunInterrupted, terminate_as_interrupt
try:
    with terminate_as_interrupt():
        print("looping", flush=True)
        while True:
            time.sleep(0.01)
except KeyboardInterrupt as error:
    print(type(error).__name__, error, flush=True)
print("restored", signal.getsignal(signal.SIGTERM) is signal.SIG_DFL, flush=True)
"""


def test_sigterm_raises_an_interrupt_in_the_running_loop_and_the_handler_is_restored():
    process = python(LOOP_UNTIL_TERMINATED, stdout=subprocess.PIPE)
    assert process.stdout.readline() == "looping\n"
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=10)
    assert out == "RunInterrupted terminated by SIGTERM\nrestored True\n"
    assert process.returncode == 0


def test_run_interrupted_is_a_keyboard_interrupt():
    assert issubclass(RunInterrupted, KeyboardInterrupt)


def test_outside_the_main_thread_it_changes_nothing():
    before = signal.getsignal(signal.SIGTERM)
    errors = []

    def worker():
        try:
            with terminate_as_interrupt():
                assert signal.getsignal(signal.SIGTERM) is before
        except Exception as error:  # signal.signal outside the main thread raises ValueError
            errors.append(error)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert errors == []
