"""Bulk downloads of big.bin, direct vs tunnel: S1 (plain and TLS upstream), S4 (the S3 probe
while bulk downloads run on the same path, with a direct control) and S10 (through the agent
behind the delay proxy). S4 compares with S1's and S3's numbers, so it runs after both."""

import statistics
import threading
import time

from ..accesslog import probe_hops
from ..clients import curl_bulk, verify_bulk, wrk
from ..common import CLUSTERS, GiB, MiB, WAN, Broken, log
from ..measure import Measure, RssSampler, cpu_snapshot


class BulkScenarios:
    """Mixin of scenarios.Run. S4 reads self.s1 (S1) and self.s3 / self.s3_direct (S3)."""

    def s1_bulk(self):
        setup, args = self.setup, self.args
        log(f"S1 bulk: verifying byte-exactness ({setup.size / MiB:.0f} MiB, once per mode)")
        for cluster in CLUSTERS:
            for mode in ("direct", "tunnel"):
                verify_bulk(setup, mode, cluster)
                setup.check_alive()
        log(f"S1 bulk: {args.bulk_repeats} timed download(s) per mode, interleaved")
        for cluster in CLUSTERS:
            direct, tunnel, cpu = self.timed_bulk("S1", cluster)
            self.s1[cluster] = direct
            self.row(f"S1 bulk {cluster}", "MB/s (median)", direct, tunnel, tunnel / direct, "≥ 0.5×", tunnel / direct >= 0.5)
            self.cpu_per_gib_rows(f"S1 bulk {cluster}", *cpu)
        # The same file as a chunked body (nginx's SSI filter, 32 KiB chunks): the path an
        # upstream's answer without a Content-Length takes. Reported, no bar of its own.
        direct, tunnel, cpu = self.timed_bulk("S1", "plain", path="/chunked/big.bin")
        self.row("S1 bulk plain chunked", "MB/s (median)", direct, tunnel, tunnel / direct)
        self.cpu_per_gib_rows("S1 bulk plain chunked", *cpu)

    def timed_bulk(self, scenario, cluster, path="/big.bin"):
        """bulk_repeats timed downloads of `path` per mode (ABBA), with CPU rows. Returns the
        median MB/s direct and tunnel, and (server, agent) CPU seconds per GiB through the
        tunnel."""
        setup, args = self.setup, self.args
        results = {"direct": [], "tunnel": []}
        cpu = []
        for r in range(args.bulk_repeats):
            for mode in self.order(r):
                with Measure(setup.cpu_pids(mode, cluster)) as m:
                    status, size, seconds, code = curl_bulk(setup, mode, cluster, args.bulk_timeout, path)
                setup.check_alive()
                if status != 200 or size != setup.size or code != 0:
                    raise Broken(f"{scenario} {mode} {cluster}: HTTP {status}, {size} of {setup.size} bytes, "
                                 f"curl exit {code}")
                mbps = size / 1e6 / seconds
                results[mode].append(mbps)
                label = cluster if path == "/big.bin" else f"{cluster} {path}"
                self.cpu_rows.append((f"{scenario} {mode} {label} #{r + 1}", m.percent()))
                if mode == "tunnel":
                    cpu.append((m.cpu["server"], m.cpu["agent"], size))
                self.raw.append(f"{scenario} {label} {mode} #{r + 1}: {mbps:.1f} MB/s ({seconds:.3f} s); "
                                f"CPU s: " + ", ".join(f"{k} {v:.2f}" for k, v in m.cpu.items()))
                log(f"  {mode:6} {label:5} #{r + 1}: {mbps:8.1f} MB/s")
        direct, tunnel = statistics.median(results["direct"]), statistics.median(results["tunnel"])
        gib = sum(c[2] for c in cpu) / GiB
        server_cpu, agent_cpu = sum(c[0] for c in cpu) / gib, sum(c[1] for c in cpu) / gib
        return direct, tunnel, (server_cpu, agent_cpu)

    def cpu_per_gib_rows(self, label, server_cpu, agent_cpu):
        self.row(label, "server CPU s/GiB", None, server_cpu, fmt="{:.2f}")
        self.row(label, "agent CPU s/GiB", None, agent_cpu, fmt="{:.2f}")
        self.row(label, "server+agent CPU s/GiB", None, server_cpu + agent_cpu, fmt="{:.2f}")

    def loaded_probe(self, mode, cluster):
        """The S3 probe (wrk -t1 -c1) while bulk downloads run back to back on the same path
        (`mode`): returns (wrk result, bulk MB/s)."""
        setup, args = self.setup, self.args
        downloads = []
        errors = []
        lead = 0.5
        window_end = time.monotonic() + lead + args.duration + 0.5
        stop = threading.Event()

        def bulk_loop():
            try:
                while not stop.is_set():
                    remaining = window_end - time.monotonic()
                    if remaining < 0.2:
                        break
                    status, size, seconds, code = curl_bulk(setup, mode, cluster, remaining)
                    # 28: cut at the end of the window by --max-time (a partial download)
                    if status != 200 or code not in (0, 28) or (code == 0 and size != setup.size):
                        errors.append(f"HTTP {status}, {size} bytes, curl exit {code}")
                        break
                    downloads.append((size, seconds))
            except Exception as error:
                errors.append(str(error))

        pids = setup.cpu_pids(mode, cluster)
        thread = threading.Thread(target=bulk_loop, daemon=True)
        t0 = time.monotonic()
        cpu0 = cpu_snapshot(pids)
        thread.start()
        time.sleep(lead)
        since = time.time()
        try:
            result = wrk(setup, mode, cluster, 1, 1, args.duration, latency=True)
        finally:
            result_until = time.time()
            stop.set()
            thread.join(timeout=args.duration + 60)
        wall = time.monotonic() - t0
        cpu1 = cpu_snapshot(pids)
        label = "S4" if mode == "tunnel" else "S4 control"
        self.cpu_rows.append((f"{label} {mode} {cluster} (probe + bulk)",
                              {k: 100.0 * (cpu1[k] - cpu0[k]) / wall for k in pids}))
        setup.check_alive()
        self.fail_on_errors(f"{label} probe {cluster}", result)
        if errors:
            self.failures.append(f"{label} bulk {cluster}: {'; '.join(errors)}")
        total_bytes = sum(d[0] for d in downloads)
        total_time = sum(d[1] for d in downloads)
        bulk = total_bytes / 1e6 / total_time if total_time else 0.0
        self.raw.append(f"{label} {cluster} {mode}: probe {result['rps']:.0f} req/s, p50 {result['p50']:.3f} ms, "
                        f"p99 {result['p99']:.3f} ms; bulk {len(downloads)} download(s), "
                        f"{total_bytes / MiB:.0f} MiB in {total_time:.2f} s = {bulk:.1f} MB/s")
        if mode == "tunnel":
            result["hops"] = probe_hops(setup.work / setup.server_log, setup.work / f"agent-{cluster}.log",
                                        "/small", since, result_until)
        return result, bulk

    def s4_head_of_line(self):
        args = self.args
        log(f"S4 head-of-line: S3 probe for {args.duration} s while bulk downloads run through the same tunnel "
            f"(then the same without the tunnel, as a control for CPU contention)")
        setup = self.setup
        for cluster in CLUSTERS:
            pids = {"server": setup.server.pid, **{f"agent {c}": p.pid for c, p in setup.agents.items()}}
            with RssSampler(pids, interval=0.1) as rss:
                result, bulk = self.loaded_probe("tunnel", cluster)
            peaks = self.memory.setdefault("during S4 (peak)", {})
            for name, kib in rss.peak.items():
                peaks[name] = max(peaks.get(name, 0), kib)
            idle, loaded = self.s3[cluster], result["p99"]
            log(f"  tunnel {cluster:5}: loaded p99 {loaded:.3f} ms (idle {idle:.3f} ms), bulk {bulk:.1f} MB/s")
            self.row(f"S4 head-of-line {cluster}", "p99 ms: idle (direct col) vs loaded (tunnel col)",
                     idle, loaded, loaded / idle, "≤ 2×", loaded / idle <= 2, fmt="{:.3f}")
            self.row(f"S4 head-of-line {cluster}", "bulk MB/s under probe vs S1 direct",
                     self.s1[cluster], bulk, bulk / self.s1[cluster], "≥ 0.3×", bulk / self.s1[cluster] >= 0.3)
            hops = result.get("hops")
            if hops:
                # Where the loaded probe waited (docs/benchmarks.md): the answer's way back through
                # the tunnel, where the bulk's bytes queue ahead of it, and the upstream's own hop.
                log(f"  tunnel {cluster:5}: return path p50 {hops['return_p50']:.3f} ms, p99 {hops['return_p99']:.3f} ms, "
                    f"max {hops['return_max']:.3f} ms; upstream hop p99 {hops['upstream_p99']} ms "
                    f"({hops['requests']} probe requests)")
                self.row(f"S4 where the probe waits {cluster}",
                         "return path ms (agent's access line → server's): p50 (direct col), p99 (tunnel col)",
                         hops["return_p50"], hops["return_p99"], fmt="{:.3f}")
                self.row(f"S4 where the probe waits {cluster}",
                         "upstream hop p99 ms (the agent's duration_ms, whole ms)", None, hops["upstream_p99"])
            # Control: the same load without the tunnel. On a small machine part of the loaded p99
            # is run-queue delay (curl, wrk, nginx, server and agent share the cores), not the tunnel.
            result, bulk = self.loaded_probe("direct", cluster)
            idle, loaded = self.s3_direct[cluster], result["p99"]
            log(f"  direct {cluster:5}: loaded p99 {loaded:.3f} ms (idle {idle:.3f} ms), bulk {bulk:.1f} MB/s (control)")
            self.row(f"S4 control {cluster}", "DIRECT p99 ms: idle (direct col) vs under direct bulk (tunnel col)",
                     idle, loaded, loaded / idle, fmt="{:.3f}")

    def s10_wan_bulk(self):
        setup, args = self.setup, self.args
        rtt = 2 * args.delay_ms
        log(f"S10 WAN bulk: {setup.size / MiB:.0f} MiB through the tunnel whose agent is behind the delay proxy "
            f"({args.delay_ms:g} ms each way), vs client → delay proxy → nginx")
        setup.start_wan_agent()
        for mode in ("direct", "tunnel"):
            verify_bulk(setup, mode, WAN)
            setup.check_alive()
        direct, tunnel, cpu = self.timed_bulk("S10", WAN)
        label = "S10 WAN bulk"
        self.row(label, "MB/s (median; direct = client → delay proxy → nginx)", direct, tunnel, tunnel / direct,
                 "≥ 0.5×", tunnel / direct >= 0.5)
        self.cpu_per_gib_rows(label, *cpu)
        window = 64 * MiB  # max_stream_window's default (docs/configuration.md)
        for item in args.limits or []:
            key, value = (part.strip() for part in item.split("=", 1))
            if key == "max_stream_window":
                window = int(value)
        self.row(label, f"one stream's ceiling: max_stream_window ÷ {rtt:g} ms, MB/s", None,
                 window / 1e6 / (rtt / 1e3))
