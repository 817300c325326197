"""Small requests with wrk, direct vs tunnel in interleaved rounds: S2 (64 connections,
throughput) and S3 (one connection, latency). wrk_pair is also S5's measurement."""

import statistics

from ..clients import wrk
from ..common import CLUSTERS, TLS_CLUSTERS, log
from ..measure import Measure


class SmallRequests:
    """Mixin of scenarios.Run; S5 (wan.py) uses wrk_pair too."""

    def wrk_pair(self, scenario, cluster, threads, connections, latency, modes=("direct", "tunnel")):
        setup, args = self.setup, self.args
        rounds = {mode: [] for mode in modes}
        for r in range(args.rounds):
            for mode in self.order(r if cluster == "plain" else r + 1, modes):
                with Measure(setup.cpu_pids(mode, cluster)) as m:
                    result = wrk(setup, mode, cluster, threads, connections, args.duration, latency)
                setup.check_alive()
                self.fail_on_errors(f"{scenario} {mode} {cluster}", result)
                rounds[mode].append(result)
                self.cpu_rows.append((f"{scenario} {mode} {cluster} #{r + 1}", m.percent()))
                extra = f", p50 {result['p50']:.3f} ms, p99 {result['p99']:.3f} ms" if latency else ""
                self.raw.append(f"{scenario} {cluster} {mode} #{r + 1}: {result['rps']:.0f} req/s{extra} "
                                f"[{result['cmd']}]")
                log(f"  {mode:6} {cluster:5} #{r + 1}: {result['rps']:9.0f} req/s{extra}")
        mean = lambda mode, key: statistics.mean(x[key] for x in rounds[mode])
        return mean

    def warm_up(self, cluster, modes=("direct", "tunnel")):
        for mode in modes:
            wrk(self.setup, mode, cluster, 2, 64, 1)

    def s2_small(self):
        args = self.args
        log(f"S2 small requests: wrk -t2 -c64 -d{args.duration}s, {args.rounds} round(s)")
        tunnel_rps = {}
        for cluster in CLUSTERS:
            # The floor in the same rounds: two relays that copy bytes (plain only; see start_relays).
            floor = cluster == "plain" and self.setup.start_relays()
            modes = ("direct", "relays", "tunnel") if floor else ("direct", "tunnel")
            self.warm_up(cluster, modes)
            mean = self.wrk_pair("S2", cluster, 2, 64, latency=False, modes=modes)
            direct, tunnel = mean("direct", "rps"), mean("tunnel", "rps")
            tunnel_rps[cluster] = tunnel
            self.row(f"S2 small {cluster}", "req/s (c64)", direct, tunnel, tunnel / direct, "≥ 0.25×", tunnel / direct >= 0.25)
            if "relays" in modes:
                relays = mean("relays", "rps")
                self.row("S2 floor plain", "req/s (c64) through two copying relays (tunnel col; S2's floor)",
                         direct, relays, relays / direct)
                self.row("S2 floor plain", "tunnel req/s ÷ the floor's (direct col = floor)", relays, tunnel,
                         tunnel / relays)
        for cluster in TLS_CLUSTERS:
            ratio = tunnel_rps[cluster] / tunnel_rps["plain"]
            self.row("S2 small", f"tunnel req/s: {cluster} ÷ plain (direct col = plain, tunnel col = {cluster})",
                     tunnel_rps["plain"], tunnel_rps[cluster], ratio, "≥ 0.8×", ratio >= 0.8)

    def s3_latency(self):
        args = self.args
        log(f"S3 one client: wrk -t1 -c1 -d{args.duration}s --latency, {args.rounds} round(s)")
        for cluster in CLUSTERS:
            mean = self.wrk_pair("S3", cluster, 1, 1, latency=True)
            self.s3[cluster] = mean("tunnel", "p99")
            self.s3_direct[cluster] = mean("direct", "p99")
            self.row(f"S3 one client {cluster}", "req/s (c1)", mean("direct", "rps"), mean("tunnel", "rps"),
                     mean("tunnel", "rps") / mean("direct", "rps"))
            for pct in ("p50", "p99"):
                direct, tunnel = mean("direct", pct), mean("tunnel", pct)
                self.row(f"S3 one client {cluster}", f"{pct} latency ms", direct, tunnel, tunnel / direct,
                         "≤ 3×", tunnel / direct <= 3, fmt="{:.3f}")
