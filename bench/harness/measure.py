"""CPU and memory of the processes under test: CPU seconds from /proc/<pid>/stat plus those of
reaped client children (Measure, cpu_snapshot), VmRSS and VmHWM from /proc/<pid>/status
(status_kib, RssSampler, settled_rss)."""

import resource
import threading
import time

from .common import CLK_TCK


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def cpu_seconds(pid):
    """utime + stime of a process (all threads), from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def status_kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class RssSampler:
    """Samples VmRSS (KiB) of some processes every `interval` s in a thread; `peak` and `last`
    per name. Used as a context manager."""

    def __init__(self, pids, interval=0.05):
        self.pids = pids  # {name: pid}
        self.interval = interval
        self.first = {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}
        self.peak = dict(self.first)
        self.last = dict(self.first)
        self.samples = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.wait(self.interval):
            self.sample()

    def sample(self):
        self.samples += 1
        for name, pid in self.pids.items():
            try:
                kib = status_kib(pid, "VmRSS")
            except OSError:
                continue
            self.last[name] = kib
            self.peak[name] = max(self.peak[name], kib)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(timeout=5)
        self.sample()
        return False


def settled_rss(pids, timeout=10.0, window=1.0, tolerance=64):
    """VmRSS (KiB) of {name: pid} once none of them moved by more than `tolerance` KiB over the
    last `window` s (polled every 0.1 s, bounded by `timeout`). Returns ({name: KiB}, settled)."""
    history = []
    deadline = time.monotonic() + timeout
    while True:
        now = time.monotonic()
        history.append((now, {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}))
        recent = [rss for t, rss in history if t >= now - window]
        if now - history[0][0] >= window and all(
                max(r[name] for r in recent) - min(r[name] for r in recent) <= tolerance for name in pids):
            return history[-1][1], True
        if now >= deadline:
            return history[-1][1], False
        time.sleep(0.1)


def cpu_snapshot(pids):
    snap = {}
    for name, plist in pids.items():
        total = 0.0
        for pid in plist:
            try:
                total += cpu_seconds(pid)
            except OSError:
                pass
        snap[name] = total
    return snap


class Measure:
    """CPU seconds of the given processes (and of reaped client children) over a block."""

    def __init__(self, pids):
        self.pids = pids

    def __enter__(self):
        self.t0 = time.monotonic()
        self.cpu0 = cpu_snapshot(self.pids)
        self.client0 = children_cpu()
        return self

    def __exit__(self, *exc):
        self.wall = time.monotonic() - self.t0
        cpu1 = cpu_snapshot(self.pids)
        self.cpu = {name: cpu1[name] - self.cpu0[name] for name in self.pids}
        self.cpu["client"] = children_cpu() - self.client0
        return False

    def percent(self):
        return {name: 100.0 * seconds / self.wall for name, seconds in self.cpu.items()}
