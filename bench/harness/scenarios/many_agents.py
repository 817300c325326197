"""S7: many idle agent sessions (bench/agentpool.py, a process per step) on a server of its own;
its memory per session and idle CPU."""

import hashlib
import os
import re
import subprocess
import sys
import time

from ..clients import http_get, metric_value
from ..common import BENCH, Broken, log
from ..config import limits_toml, start_own_server
from ..measure import cpu_snapshot, settled_rss, status_kib
from ..prepare import make_certs
from ..procs import PROCS, check_procs, nofile_hard, wait_for_line


class ManyAgents:
    """Mixin of scenarios.Run."""

    def s7_many_agents(self):
        """S7: idle agent sessions on one server of its own (its config names every cluster of
        the largest step, with inline token_sha256: a token file per cluster would be polled
        every config_poll_interval and measured as idle CPU). bench/agentpool.py opens the
        sessions, one pool process per step, so the server grows from one step to the next
        (1,000, then 9,000 more to 10,000); after each step, once the sessions are up and the
        server's RSS has settled: its CPU over --s7-idle s of idleness (heartbeats only), then
        its RSS, whose growth over the baseline (before any session) is divided by the sessions
        up."""
        args, work = self.args, self.setup.work
        steps = args.s7_sessions
        total = steps[-1]
        if nofile_hard() < total + 256:
            raise Broken(f"S7: RLIMIT_NOFILE hard limit {nofile_hard()} is too low for {total} sessions (the "
                         f"server and the pool hold one descriptor per session): raise it (ulimit -Hn) or pass "
                         f"--s7-sessions")
        log(f"S7 many agents: {', '.join(str(n) for n in steps)} idle sessions on one server of its own "
            f"({total} clusters, inline token_sha256), {args.s7_idle:g} s idle window per step, "
            + (f"each agent pinging every {args.s7_agent_ping:g} s" if args.s7_agent_ping > 0 else "agents that only answer Pings"))
        lines, clusters = [], []
        for i in range(1, total + 1):
            cluster, token = f"c{i:05d}", f"bench-s7-{i}-{os.urandom(8).hex()}"
            lines.append(f"{cluster} {token}\n")
            clusters.append(f'\n[[cluster]]\nid = "{cluster}"\n'
                            f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n')
        (work / "s7-tokens.txt").write_text("".join(lines))
        # The default max_connections_per_listener (10,000) would take 10,000 sessions exactly and
        # leave no room (an agent reconnecting, a /healthz probe on the public listener).
        limits = limits_toml(args, {"max_connections_per_listener": max(10000, total + 1024)}, server=True)
        # --tunnel-tls: the sessions are wss://, as production agents' are (each holds a TLS
        # session on the server).
        public_tls, pool_tls = "", []
        if args.tunnel_tls:
            make_certs(work)
            public_tls = f'tls_cert = "{work}/tls.pem"\ntls_key = "{work}/tls.key"\n'
            pool_tls = ["--ca", str(work / "ca.pem")]
        config = (f'[public]\nlisten = "127.0.0.1:0"\n{public_tls}[internal]\nlisten = "127.0.0.1:0"\n'
                  '[ops]\nlisten = "127.0.0.1:0"\n' + limits + "".join(clusters))
        started = time.monotonic()
        server, server_log, public, _, ops = start_own_server(args, work, "s7", config)
        listening = time.monotonic() - started
        procs = {"S7 server": (server, server_log)}
        log(f"  server listening {listening:.2f} s after its start ({total} clusters, config "
            f"{len(config) / 1024:.0f} KiB): public {public}, ops {ops}")
        pools = []
        try:
            # Warm the paths the harness itself uses, so their first-use allocations are in the
            # baseline, not in the sessions' share.
            public_url = f"{'https' if args.tunnel_tls else 'http'}://{public}/healthz"
            for url, cafile in ((f"http://{ops}/metrics", None), (f"http://{ops}/healthz", None),
                                (public_url, work / "ca.pem" if args.tunnel_tls else None)):
                http_get(url, cafile=cafile)
            baseline, settled = settled_rss({"server": server.pid})
            baseline = baseline["server"]
            self.raw.append(f"S7 server: listening {listening:.2f} s after its start with {total} clusters "
                            f"({len(config)} bytes of config); baseline RSS {baseline} KiB"
                            + ("" if settled else " (not settled within 10 s)"))
            log(f"  baseline RSS {baseline / 1024:.1f} MiB")
            up_total = 0
            previous = 0
            for n in steps:
                count = n - previous
                pool_log = work / f"s7-pool-{n}.log"
                t0 = time.monotonic()
                pool = PROCS.start(f"agent pool ({count})",
                                   [sys.executable, str(BENCH / "agentpool.py"), "--server", public,
                                    "--tokens", str(work / "s7-tokens.txt"), "--first", str(previous),
                                    "--count", str(count), "--concurrency", str(args.pool_concurrency),
                                    "--lifetime", str(args.helper_lifetime),
                                    "--ping-interval", str(args.s7_agent_ping), *pool_tls],
                                   stdout=open(pool_log, "w"), stderr=subprocess.STDOUT)
                pools.append((pool, pool_log))
                procs[f"agent pool ({count})"] = (pool, pool_log)
                match = wait_for_line(pool_log, r"(?m)^up (\d+) failed (\d+)(?: first_error: (.*))?$", pool,
                                      "agent pool", timeout=60 + count / 50)
                connect_seconds = time.monotonic() - t0
                up, failed = int(match.group(1)), int(match.group(2))
                up_total += up
                log(f"  {n}: pool of {count} up in {connect_seconds:.1f} s: {up} up, {failed} failed"
                    + (f" (first: {match.group(3)})" if failed else ""))
                if failed:
                    self.failures.append(f"S7 step {n}: {failed} of {count} sessions failed; first: {match.group(3)}")
                # The server's own count: every session registered (bounded poll).
                deadline = time.monotonic() + 30
                while True:
                    check_procs(procs)
                    connected = metric_value(ops, "agents_connected")
                    if connected == up_total:
                        break
                    if time.monotonic() > deadline:
                        raise Broken(f"S7 step {n}: agents_connected is {connected}, not {up_total}, 30 s after "
                                     f"the pool reported its sessions up")
                    time.sleep(0.2)
                rss_before, settled = settled_rss({"server": server.pid})
                rss_before = rss_before["server"]
                pids = {"server": [server.pid], "client": [p.pid for p, _ in pools]}
                cpu0, w0 = cpu_snapshot(pids), time.monotonic()
                deadline = w0 + args.s7_idle
                while time.monotonic() < deadline:  # the idle window itself (processes checked)
                    check_procs(procs)
                    time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
                cpu1, wall = cpu_snapshot(pids), time.monotonic() - w0
                percent = {name: 100.0 * (cpu1[name] - cpu0[name]) / wall for name in pids}
                rss = status_kib(server.pid, "VmRSS")
                connected = metric_value(ops, "agents_connected")
                check_procs(procs)
                per_session = (rss - baseline) / up_total if up_total else float("nan")
                label = f"S7 many agents ({n})"
                self.cpu_rows.append((f"S7 idle, {up_total} sessions ({wall:.0f} s; client = agent pools)", percent))
                self.raw.append(f"S7 {n}: {up} of {count} sessions up in {connect_seconds:.2f} s ({failed} failed"
                                + (f", first: {match.group(3)}" if failed else "") + f"); server RSS KiB: baseline "
                                f"{baseline}, settled with {up_total} sessions {rss_before}"
                                + ("" if settled else " (not settled within 10 s)") + f", after {wall:.1f} s idle "
                                f"{rss} = {per_session:.2f} KiB per session; server CPU {cpu1['server'] - cpu0['server']:.2f} s "
                                f"in {wall:.1f} s = {percent['server']:.2f}% of a core; pools {percent['client']:.1f}%; "
                                f"agents_connected {connected:.0f}")
                log(f"  {up_total} sessions: server RSS {baseline / 1024:.1f} → {rss / 1024:.1f} MiB = "
                    f"{per_session:.2f} KiB per session; idle CPU {percent['server']:.2f}% of a core over {wall:.0f} s")
                self.row(label, "sessions: failed (direct col), up and counted by agents_connected (tunnel col)",
                         failed, connected)
                self.row(label, "server RSS MiB: baseline without sessions (direct col) vs with them, after the "
                         "idle window (tunnel col)", baseline / 1024, rss / 1024, fmt="{:.1f}")
                self.row(label, "server RSS KiB per session (growth ÷ sessions)", None, per_session, None,
                         "≤ 8 KiB", per_session <= 8, fmt="{:.2f}")
                bar = ("≤ 2%", percent["server"] <= 2) if n >= 10000 else (None, None)
                self.row(label, f"server CPU % of one core, idle, over {wall:.0f} s", None, percent["server"], None,
                         *bar, fmt="{:.2f}")
                if connected != up_total:
                    self.failures.append(f"S7 step {n}: agents_connected fell to {connected} of {up_total} during "
                                         f"the idle window")
                previous = n
        finally:
            closed = 0
            for pool, pool_log in pools:
                PROCS.stop(pool)
                done = re.search(r"(?m)^done open (\d+) closed_by_server (\d+) pings (\d+) sent (\d+) "
                                 r"pongs (\d+) unexpected (\d+)$", pool_log.read_text(errors="replace"))
                if not done:
                    self.failures.append(f"S7: {pool_log.name} has no `done` line (the pool did not stop cleanly)")
                    continue
                opened, sent, pongs, unexpected = (int(done.group(i)) for i in (1, 4, 5, 6))
                closed += int(done.group(2))
                self.raw.append(f"S7 pool {pool_log.name}: {done.group(0)}")
                if unexpected:
                    self.failures.append(f"S7: {pool_log.name}: {unexpected} unexpected frames from the server")
                # Every Ping answered but at most one per session still in flight at the end.
                if args.s7_agent_ping > 0 and pongs < sent - opened:
                    self.failures.append(f"S7: {pool_log.name}: {pongs} Pongs for {sent} Pings sent by "
                                         f"{opened} sessions")
            hwm = status_kib(server.pid, "VmHWM") if server.poll() is None else None
            PROCS.stop(server)
        if hwm is not None:
            self.row("S7 many agents", "server peak RSS MiB (VmHWM)", None, hwm / 1024, fmt="{:.1f}")
        self.row("S7 many agents", "sessions the server closed while they were idle (pools' count)", None, closed)
        if closed:
            self.failures.append(f"S7: the server closed {closed} idle sessions (see the raw lines)")
