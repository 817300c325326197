"""S9: many watch-like streams held open on one tunnel of a server and an agent of their own
(bench/watches.py is the upstream, and the HTTP/1 clients; examples/h2watch the HTTP/2 clients);
memory per stream at both ends, and that every stream stays live."""

import hashlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from ..clients import http_get, json_get, metric_value, wait_readyz
from ..common import BENCH, MiB, WATCH, Broken, log
from ..config import limits_toml, merged_limits, process_env, start_own_server
from ..measure import RssSampler, cpu_snapshot, settled_rss, status_kib
from ..prepare import make_certs
from ..procs import PROCS, check_procs, nofile_hard, wait_for_line


class ManyStreams:
    """Mixin of scenarios.Run."""

    def s9_many_streams(self, h2=False):
        """S9: --s9-streams concurrent watch-like streams on one tunnel of a server and an agent
        of their own. bench/watches.py is the upstream (a chunk at once, then one every
        --s9-interval s, never ending) and the clients (one connection to the server's internal
        listener per stream). With `h2`, the internal listener speaks TLS and the clients are
        examples/h2watch (HTTP/2, up to the server's 1,000 streams per connection, as Argo CD's
        client-go opens them). The limits that would stop them are raised: max_streams_per_tunnel
        (both ends), tunnel_buffer (the initial windows of every stream must fit it) and the
        server's max_connections_per_listener (one client connection per stream)."""
        args, work = self.args, self.setup.work
        n = args.s9_streams
        if nofile_hard() < n + 256:
            raise Broken(f"S9: RLIMIT_NOFILE hard limit {nofile_hard()} is too low for {n} streams (server, "
                         f"agent, upstream and clients hold one descriptor per stream): raise it or pass "
                         f"--s9-streams")
        max_streams = max(1024, n + 256)
        window = 65536
        for item in args.limits or []:
            key, value = (part.strip() for part in item.split("=", 1))
            if key == "stream_window":
                window = int(value)
        # Every stream's initial window is reserved against tunnel_buffer; keep the default's
        # 64 MiB of headroom for windows that grow.
        tunnel = {"max_streams_per_tunnel": max_streams,
                  "tunnel_buffer": max(128 * MiB, max_streams * window + 64 * MiB)}
        if max_streams == 1024 and tunnel["tunnel_buffer"] == 128 * MiB:
            tunnel = {}  # the defaults suffice
        server_limits = dict(tunnel, max_connections_per_listener=max(10000, n + 1024))
        h2watch = self.setup.bin / "examples" / "h2watch"
        if h2 and not h2watch.is_file():
            raise Broken(f"{h2watch} not found (cargo build --release --example h2watch)")
        if h2:
            make_certs(work)
        label = "S9 many streams" + (" (HTTP/2 clients)" if h2 else "")
        log(f"{label}: {n} watch streams on one tunnel, held {args.s9_hold:g} s (a chunk every "
            f"{args.s9_interval:g} s); limits: {', '.join(f'{k} = {v}' for k, v in server_limits.items())}")
        procs = {}
        clients = None
        try:
            up_log = work / "s9-upstream.log"
            upstream = PROCS.start("watch upstream", [sys.executable, str(BENCH / "watches.py"), "serve",
                                                      "--interval", str(args.s9_interval),
                                                      "--lifetime", str(args.helper_lifetime)],
                                   stdout=open(up_log, "w"), stderr=subprocess.STDOUT)
            procs["watch upstream"] = (upstream, up_log)
            wait_for_line(up_log, r"(?m)^ready$", upstream, "watch upstream")
            upstream_addr = re.search(r"listen (\S+)", up_log.read_text()).group(1)
            token = f"bench-s9-{os.urandom(8).hex()}"
            (work / "s9.agent-token").write_text(token + "\n")
            internal_tls = f'tls_cert = "{work}/tls.pem"\ntls_key = "{work}/tls.key"\n' if h2 else ""
            config = ('[public]\nlisten = "127.0.0.1:0"\n[internal]\nlisten = "127.0.0.1:0"\n' + internal_tls +
                      '[ops]\nlisten = "127.0.0.1:0"\n' + limits_toml(args, server_limits, server=True)
                      + f'\n[[cluster]]\nid = "{WATCH}"\ntoken_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\n')
            server, server_log, public, internal, ops = start_own_server(args, work, "s9", config)
            procs["S9 server"] = (server, server_log)
            agent_config = work / "s9-agent.toml"
            agent_config.write_text(
                f'server_url = "ws://{public}/connect"\nallow_insecure_server = true\n'
                f'token_file = "{work}/s9.agent-token"\nhealth_listen = "127.0.0.1:0"\n\n[upstream]\n'
                f'target = "{upstream_addr}"\nplaintext = true\ninject_token = false\n'
                + limits_toml(args, tunnel, server=False))
            agent_log = work / "s9-agent.log"
            agent = PROCS.start("argocd-proxy-agent (S9)",
                                [str(Path(args.bin_dir) / "argocd-proxy-agent"), "--config", str(agent_config)],
                                stdout=open(agent_log, "w"), stderr=subprocess.STDOUT, env=process_env(args))
            procs["S9 agent"] = (agent, agent_log)
            wait_for_line(agent_log, r"tunnel up", agent, "S9 agent")
            wait_readyz(ops, WATCH, lambda: check_procs(procs), 30, prefix=f"{label}: ")
            # Sanity (and warm-up of the paths the harness uses): the upstream's counters through
            # the tunnel, and the ops /metrics.
            status, body = http_get(f"{'https' if h2 else 'http'}://{internal}/tunnel/{WATCH}/stats", timeout=10,
                                    cafile=str(work / "ca.pem") if h2 else None)
            if status != 200 or b'"open": 0' not in body:
                raise Broken(f"{label}: GET /tunnel/{WATCH}/stats: HTTP {status}, body {body[:200]!r}")
            metric_value(ops, "tunnel_streams")
            pids = {"server": server.pid, "agent": agent.pid}
            baseline, settled = settled_rss(pids)
            log(f"  tunnel up; baseline RSS: server {baseline['server'] / 1024:.1f} MiB, agent "
                f"{baseline['agent'] / 1024:.1f} MiB")
            clients_log = work / "s9-clients.log"
            t0 = time.monotonic()
            common = ["--target", internal, "--path", f"/tunnel/{WATCH}/watch?watch=true", "--count", str(n),
                      "--concurrency", str(args.pool_concurrency), "--hold", str(args.s9_hold),
                      "--interval", str(args.s9_interval), "--lifetime", str(args.helper_lifetime)]
            if h2:
                cmd = [str(h2watch), *common, "--ca", str(work / "ca.pem"), "--per-connection", "1000"]
            else:
                cmd = [sys.executable, str(BENCH / "watches.py"), "clients", *common]
            clients = PROCS.start("watch clients", cmd, stdout=open(clients_log, "w"), stderr=subprocess.STDOUT)
            procs["watch clients"] = (clients, clients_log)
            cpu_pids = {"server": [server.pid], "agent": [agent.pid], "client": [clients.pid],
                        "upstream": [upstream.pid]}
            with RssSampler(pids, interval=0.25) as rss:
                match = wait_for_line(clients_log, r"(?m)^up (\d+) failed (\d+)(?: first_error: (.*))?$", clients,
                                      "watch clients", timeout=60 + n / 50)
                hold_started = time.monotonic()  # the clients' hold starts when they print `up`
                open_seconds = hold_started - t0
                up, failed = int(match.group(1)), int(match.group(2))
                log(f"  {up} streams up in {open_seconds:.1f} s, {failed} failed"
                    + (f" (first: {match.group(3)})" if failed else ""))
                check_procs(procs)
                with_streams, settled_up = settled_rss(pids)
                gauges_up = (metric_value(ops, "tunnel_streams", {"cluster": WATCH}),
                             json_get(f"http://{upstream_addr}/stats").get("open"))
                if failed:
                    # The server answers TooManyStreams, OverBudget and a lost tunnel with the same
                    # 503: the stream count at the server and the limits tell which it was.
                    effective = merged_limits(args, server_limits, server=True)
                    self.failures.append(
                        f"{label}: {failed} of {n} streams did not open, {up} did; first: {match.group(3)}; the server "
                        f"held {gauges_up[0]} streams on the tunnel with max_streams_per_tunnel = "
                        f"{effective.get('max_streams_per_tunnel', '1024 (default)')}, tunnel_buffer = "
                        f"{effective.get('tunnel_buffer', '134217728 (default)')}, stream_window = "
                        f"{effective.get('stream_window', '65536 (default)')}")
                cpu0, w0 = cpu_snapshot(cpu_pids), time.monotonic()
                live_match = wait_for_line(
                    clients_log, r"(?m)^live (\d+) of (\d+) closed (\d+) stale (\d+) chunks_min (\d+) "
                    r"chunks_median (\S+)(?: first_close: (.*))?$", clients, "watch clients",
                    timeout=args.s9_hold + 30)
                cpu1, wall = cpu_snapshot(cpu_pids), time.monotonic() - w0
                held = time.monotonic() - hold_started
                end = {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}
                gauges_end = (metric_value(ops, "tunnel_streams", {"cluster": WATCH}),
                              json_get(f"http://{upstream_addr}/stats").get("open"),
                              metric_value(ops, "tunnel_active_connections", {"cluster": WATCH}))
            check_procs(procs)
            live, of, closed, stale = (int(live_match.group(i)) for i in range(1, 5))
            percent = {name: 100.0 * (cpu1[name] - cpu0[name]) / wall for name in cpu_pids}
            self.cpu_rows.append((f"{label}: {up} open streams, held ({wall:.0f} s; client = watch clients)", percent))
            per = {name: (end[name] - baseline[name]) / up if up else float("nan") for name in pids}
            log(f"  after {held:.0f} s: {live} of {up} live ({closed} closed, {stale} stale); server RSS "
                f"{baseline['server'] / 1024:.1f} → {end['server'] / 1024:.1f} MiB = {per['server']:.2f} KiB per "
                f"stream; agent {baseline['agent'] / 1024:.1f} → {end['agent'] / 1024:.1f} MiB = "
                f"{per['agent']:.2f} KiB per stream")
            self.raw.append(
                f"{label}: {up} of {n} streams up in {open_seconds:.2f} s ({failed} failed"
                + (f", first: {match.group(3)}" if failed else "") + f"); {live_match.group(0)} (after "
                f"{held:.1f} s); RSS KiB baseline / all up, settled"
                + ("" if settled_up else " (not settled within 10 s)") + " / end of the hold / peak: "
                + "; ".join(f"{name} {baseline[name]} / {with_streams[name]} / {end[name]} / {rss.peak[name]}"
                            for name in pids)
                + f"; server tunnel_streams{{cluster={WATCH}}} {gauges_up[0]} when up, {gauges_end[0]} at the end "
                f"(tunnel_active_connections {gauges_end[2]}); upstream open {gauges_up[1]} / {gauges_end[1]}")
            if live_match.group(7):
                self.raw.append(f"{label}: first stream to close: {live_match.group(7)}")
            if failed or live != n:  # what the server and the agent said about it
                for name, path in (("server", server_log), ("agent", agent_log)):
                    warnings = [line for line in path.read_text(errors="replace").splitlines()
                                if (" WARN " in line or " ERROR " in line) and "plaintext ws://" not in line]
                    if warnings:
                        self.raw.append(f"{label}: {name} log: {len(warnings)} WARN/ERROR line(s), the first: {warnings[0]}")
            if live != n:
                self.failures.append(f"{label}: {live} of {n} streams live after {held:.0f} s ({closed} closed, "
                                     f"{stale} stale)" + (f"; first close: {live_match.group(7)}"
                                                          if live_match.group(7) else ""))
            self.row(label, "streams: failed to open (direct col), up (tunnel col)", failed, up)
            self.row(label, "server RSS MiB: tunnel up, no streams (direct col) vs with the streams, end of the "
                     "hold (tunnel col)", baseline["server"] / 1024, end["server"] / 1024, fmt="{:.1f}")
            self.row(label, "server RSS KiB per stream (growth ÷ streams)", None, per["server"], None, "≤ 4 KiB",
                     per["server"] <= 4, fmt="{:.2f}")
            self.row(label, "agent RSS MiB: tunnel up, no streams (direct col) vs with the streams (tunnel col)",
                     baseline["agent"] / 1024, end["agent"] / 1024, fmt="{:.1f}")
            self.row(label, "agent RSS KiB per stream (growth ÷ streams)", None, per["agent"], fmt="{:.2f}")
            self.row(label, f"streams live after {held:.0f} s (direct col: requested; ratio col: share)", n, live,
                     live / n, "all live", live == n)
            self.row(label, f"server tunnel_streams{{cluster={WATCH}}} (direct col: all up) vs end of the hold",
                     gauges_up[0], gauges_end[0])
            # Closing the clients must release every stream at the server and the upstream (bounded).
            PROCS.stop(clients)
            deadline = time.monotonic() + 30
            while True:
                left = (metric_value(ops, "tunnel_streams", {"cluster": WATCH}),
                        json_get(f"http://{upstream_addr}/stats").get("open"))
                if (not left[0] and not left[1]) or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            self.raw.append(f"{label}: after the clients closed: server tunnel_streams {left[0]}, upstream open {left[1]}")
            self.row(label, "streams left after the clients closed (waited up to 30 s): server tunnel_streams "
                     "(direct col), upstream open (tunnel col)", left[0] or 0, left[1] or 0)
            if left[1]:
                log(f"  {left[1]} upstream streams still open after the clients closed")
        finally:
            for name, (proc, _) in reversed(list(procs.items())):
                PROCS.stop(proc)
