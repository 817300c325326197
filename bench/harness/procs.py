"""Processes: every process this harness starts is registered in PROCS and stopped by PID (never by
name: other processes of the same name may run on the machine). Also what follows them: their log
files, their children, free ports, CPU pinning and the descriptor limit they inherit."""

import os
import re
import resource
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

from .common import Broken, MiB, log


class Procs:
    def __init__(self):
        self.lock = threading.Lock()
        self.items = []  # (name, Popen)

    def start(self, name, cmd, **kwargs):
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        # Own session: a Ctrl-C on the terminal reaches only the harness, which stops the rest.
        proc = subprocess.Popen(cmd, start_new_session=True, **kwargs)
        with self.lock:
            self.items.append((name, proc))
        return proc

    def forget(self, proc):
        with self.lock:
            self.items = [(n, p) for n, p in self.items if p is not proc]

    def stop(self, proc, grace=5.0):
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        self.forget(proc)

    def stop_all(self, grace=5.0):
        """SIGTERM to every process at once, then SIGKILL to those still running after `grace`
        (an agent holding idle pooled streams may wait out its shutdown_grace)."""
        with self.lock:
            items = list(reversed(self.items))
        for name, proc in items:
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        for name, proc in items:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log(f"{name} (pid {proc.pid}) still running {grace:.0f} s after SIGTERM: SIGKILL")
            try:
                self.stop(proc, grace=0.1)
            except Exception as error:  # keep stopping the others
                log(f"stopping {name} (pid {proc.pid}): {error}")


PROCS = Procs()


def run_client(cmd, timeout, stdout=subprocess.PIPE):
    """Runs a load client to completion; returns (returncode, stdout, stderr)."""
    proc = PROCS.start(cmd[0], cmd, stdout=stdout, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        PROCS.stop(proc)
        raise Broken(f"{shlex.join(cmd)} did not finish within {timeout:.0f} s")
    except BaseException:  # interrupted: stop it now, not only forget it
        PROCS.stop(proc)
        raise
    PROCS.forget(proc)
    return proc.returncode, out or "", err or ""


def child_pids(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_affinity(pid, cpus):
    """Pins every thread of a running process (sched_setaffinity is per thread; threads created
    later inherit their creator's mask)."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(tid, cpus)
        except OSError:  # the thread exited meanwhile
            pass


def wait_for_line(path, pattern, proc, what, timeout=30.0):
    """The first match of `pattern` in the file at `path` (polled, bounded)."""
    deadline = time.monotonic() + timeout
    regex = re.compile(pattern)
    while time.monotonic() < deadline:
        try:
            match = regex.search(path.read_text(errors="replace"))
        except OSError:
            match = None
        if match:
            return match
        if proc.poll() is not None:
            raise Broken(f"{what} exited ({proc.returncode}) before logging /{pattern}/:\n{tail(path)}")
        time.sleep(0.05)
    raise Broken(f"timed out after {timeout:.0f} s waiting for /{pattern}/ from {what}:\n{tail(path)}")


def tail(path, lines=20):
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def check_procs(procs):
    """Raises Broken for the first of {name: (Popen, log path)} that is no longer running."""
    for name, (proc, log_path) in procs.items():
        if proc.poll() is not None:
            raise Broken(f"{name} (pid {proc.pid}) died with status {proc.returncode}:\n{tail(log_path)}")


def nofile_hard():
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_nofile():
    """The harness's soft RLIMIT_NOFILE up to the hard limit (its children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def file_size(path):
    try:
        return path.stat().st_size
    except OSError:
        return 0


def count_lines_from(path, offset):
    with open(path, "rb") as f:
        f.seek(offset)
        lines = 0
        while True:
            block = f.read(8 * MiB)
            if not block:
                return lines
            lines += block.count(b"\n")
