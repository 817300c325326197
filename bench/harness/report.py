"""The report: the results table (also printed), the CPU table, the raw lines and failures,
written to bench/results/<date>-<smoke|full>.md with what the numbers depend on (commit, CPU,
kernel, tools, options, other load seen on the machine during the run)."""

import datetime
import os
import shlex
import shutil
import subprocess
import sys
import threading

from .common import BENCH, OWN_SETUP, REPO, SCENARIOS


def table(run, with_bars):
    header = ["scenario", "metric", "direct", "tunnel", "ratio"] + (["bar (issue)", "met?"] if with_bars else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for scenario, metric, direct, tunnel, ratio, bar, met, fmt in run.rows:
        cells = [scenario, metric, "-" if direct is None else fmt.format(direct),
                 "-" if tunnel is None else fmt.format(tunnel), "-" if ratio is None else f"{ratio:.2f}×"]
        if with_bars:
            cells += [bar or "", "" if met is None else ("met" if met else "**missed**")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_table(run):
    names = ["server", "agent", "nginx", "client", "proxy"]
    if any("upstream" in percent for _, percent in run.cpu_rows):  # S9's watch upstream
        names.append("upstream")
    if any("relays" in percent for _, percent in run.cpu_rows):  # S2's floor
        names.append("relays")
    lines = ["| measurement | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for label, percent in run.cpu_rows:
        lines.append(f"| {label} | " + " | ".join(
            f"{percent[n]:.0f}" if n in percent else "-" for n in names) + " |")
    return "\n".join(lines)


def machine_info():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = "unknown"
    if shutil.which("git"):  # read-only
        commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True).stdout.strip() or commit
    with open("/proc/meminfo") as f:
        mem = f.readline().split(":", 1)[1].strip()
    return {
        "commit": commit,
        "cpu": f"{cpu} × {os.cpu_count()}",
        "kernel": " ".join(os.uname()[2:4]),
        "memory": mem,
        "tools": "; ".join(first_line(cmd) for cmd in (["nginx", "-v"], ["wrk", "-v"], ["curl", "--version"])),
    }


def first_line(cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True)
    except OSError:
        return f"{cmd[0]}: not installed"
    return ((out.stdout or "") + (out.stderr or "")).strip().splitlines()[0] if (out.stdout or out.stderr) else cmd[0]


class LoadWatch:
    """Samples other CPU-heavy processes (e.g. someone's cargo build) while the benchmark runs."""

    NAMES = {"rustc", "cargo", "cc1", "cc1plus", "ld", "ld.lld", "rust-lld", "clippy-driver", "rustdoc", "ld.bfd", "cc"}

    def __init__(self):
        self.samples = 0
        self.busy = 0
        self.seen = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self):
        while not self.stop.wait(2.0):
            self.samples += 1
            found = set()
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    try:
                        with open(f"/proc/{entry}/comm") as f:
                            comm = f.read().strip()
                    except OSError:
                        continue
                    if comm in self.NAMES:
                        found.add(comm)
            if found:
                self.busy += 1
                self.seen |= found

    def summary(self):
        if not self.samples:
            return "not sampled"
        if not self.busy:
            return f"no compiler/linker processes seen ({self.samples} samples, every 2 s)"
        return (f"compiler/linker processes ({', '.join(sorted(self.seen))}) were running in "
                f"{self.busy} of {self.samples} samples (every 2 s): numbers are noisier than on an idle machine")


def top_snapshot():
    if not shutil.which("top"):
        return "(top not installed)"
    out = subprocess.run(["top", "-b", "-n1", "-w", "160"], capture_output=True, text=True).stdout
    return "\n".join(out.splitlines()[:15])


def write_report(args, run, info, started, watch, loadavg, top_start, error):
    mode = "smoke" if args.smoke else "full"
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    path = results / f"{started.strftime('%Y%m%d-%H%M%S')}-{mode}.md"
    text = [
        f"# argocd-proxy benchmark ({mode})",
        "",
        f"- command: `{shlex.join([sys.argv[0], *sys.argv[1:]])}` (cwd {os.getcwd()})",
        f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z')} (the run took "
        f"{(datetime.datetime.now(datetime.timezone.utc) - started).total_seconds():.0f} s, build included)",
        f"- commit: {info['commit']} (working tree may contain uncommitted edits)",
        f"- CPU: {info['cpu']}; memory {info['memory']}",
        f"- kernel: {info['kernel']}",
        f"- tools: {info['tools']}",
        f"- bulk file: {args.size} bytes of random data; wrk measurements {args.duration} s × {args.rounds} round(s); "
        f"S1 {args.bulk_repeats} timed download(s) per mode; nginx workers {args.nginx_workers}; "
        f"RUST_LOG={args.rust_log}; scenarios {','.join(s for s in SCENARIOS if s in args.only)}"
        + ("; tunnel wss:// (--tunnel-tls)" if args.tunnel_tls else "; tunnel ws://")
        + (f"; WAN delay {args.delay_ms:g} ms each way" if args.only & {"S5", "S10"} else "")
        + (f"; limits overridden: {', '.join(args.limits)}" if args.limits else "; default [limits]")
        + (f"; server-only limits: {', '.join(args.server_limits)}" if args.server_limits else "")
        + ("; S11 pinned (--pin): server, agents, probe on one CPU, flood client and nginx on another"
           if args.pin else "")
        + (f"; S6 {args.slow_rate:g} MB/s for {args.slow_seconds:g} s" if "S6" in args.only else "")
        + (f"; S8 SIG{args.restart_signal} × {args.restarts}, {args.restart_spacing:g} s apart"
           if "S8" in args.only else "")
        + (f"; S7 sessions {','.join(str(n) for n in args.s7_sessions)} (one server, grown), "
           f"{args.s7_idle:g} s idle window" if "S7" in args.only else "")
        + (f"; S9 {args.s9_streams} streams held {args.s9_hold:g} s, a chunk every {args.s9_interval:g} s"
           if "S9" in args.only else "")
        + (f"; pool/client connects in flight {args.pool_concurrency}" if args.only & OWN_SETUP else ""),
        f"- load average at start / end: {loadavg[0]} / {loadavg[1]}",
        f"- concurrent load: {watch.summary()}",
        "",
        "## Results",
        "",
        table(run, with_bars=not args.smoke),
        "",
        "Ratios are tunnel ÷ direct (for latency, higher is worse). MB = 10^6 bytes.",
        "",
        "## CPU during each measurement (% of one core; client = curl/wrk, S7's agent pools, S9's watch clients; "
        "proxy = the delay proxy; upstream = S9's watch upstream; relays = S2's floor, both relays)",
        "",
        cpu_table(run),
        "",
        "## Raw measurements",
        "",
        *[f"- {line}" for line in run.raw],
        "",
        "## Failures",
        "",
        *([f"- {f}" for f in run.failures] or ["none"]),
        *([f"- aborted: {error}"] if error else []),
        "",
        "## top at start",
        "",
        "```",
        top_start,
        "```",
        "",
    ]
    path.write_text("\n".join(text))
    return path
