"""S5: round trips through the tunnel whose agent is behind the delay proxy (emulated WAN): the
first request after the tunnel comes up, then one client with wrk (S2/S3's wrk_pair)."""

import statistics
import time

from ..clients import curl_once, http_get
from ..common import SMALL, WAN, Broken, log


class WanLatency:
    """Mixin of scenarios.Run; wrk_pair is SmallRequests'."""

    def s5_wan_latency(self):
        setup, args = self.setup, self.args
        rtt = 2 * args.delay_ms
        log(f"S5 WAN round trips: delay proxy adds {args.delay_ms:g} ms each way between agent and server "
            f"(round trip {rtt:g} ms); one client, wrk -t1 -c1 -d{args.duration}s --latency")
        started = time.monotonic()
        setup.start_wan_agent()
        up = time.monotonic() - started
        # The first request after the tunnel came up (readyz just turned 200), then a few more: each
        # a new client connection (curl) to the server on loopback, so only the tunnel's side
        # crosses the emulated WAN.
        tunnel_url = setup.url("tunnel", WAN, "/small")
        status, first = curl_once(tunnel_url)
        following = [curl_once(tunnel_url) for _ in range(5)]
        # Direct through the proxy on a new connection: the emulated handshake costs one round trip.
        direct_new = [curl_once(setup.url("direct", WAN, "/small")) for _ in range(3)]
        bad = [code for code, _ in [(status, first), *following, *direct_new] if code != 200]
        if bad:
            self.failures.append(f"S5 single requests: HTTP {bad}")
        for mode in ("direct", "tunnel"):
            code, body = http_get(setup.url(mode, WAN, "/small"))
            if code != 200 or body != SMALL.encode():
                raise Broken(f"S5 {mode} wan /small: HTTP {code}, body {body[:200]!r}")
        nexts = statistics.median(s for _, s in following) * 1e3
        direct_first = statistics.median(s for _, s in direct_new) * 1e3
        first *= 1e3
        self.raw.append(f"S5 wan agent: tunnel up and ready {up:.2f} s after start; first request {first:.1f} ms, "
                        f"next {', '.join(f'{s * 1e3:.1f}' for _, s in following)} ms (curl, tunnel); direct "
                        f"through the proxy on a new connection {', '.join(f'{s * 1e3:.1f}' for _, s in direct_new)} ms")
        log(f"  first request after tunnel up {first:.1f} ms ({first / rtt:.2f} RT), next (median) {nexts:.1f} ms; "
            f"direct new connection {direct_first:.1f} ms")
        mean = self.wrk_pair("S5", WAN, 1, 1, latency=True)
        scenario = "S5 WAN one client"
        d50, t50 = mean("direct", "p50"), mean("tunnel", "p50")
        d99, t99 = mean("direct", "p99"), mean("tunnel", "p99")
        self.row(scenario, "req/s (c1)", mean("direct", "rps"), mean("tunnel", "rps"),
                 mean("tunnel", "rps") / mean("direct", "rps"), fmt="{:.1f}")
        self.row(scenario, "p50 ms (direct = client → delay proxy → nginx)", d50, t50, t50 / d50, fmt="{:.2f}")
        self.row(scenario, f"p50 in round trips of {rtt:g} ms", d50 / rtt, t50 / rtt, t50 / d50,
                 "≤ 1.1 RT (tunnel)", t50 / rtt <= 1.1, fmt="{:.3f}")
        self.row(scenario, "p99 ms", d99, t99, t99 / d99, fmt="{:.2f}")
        self.row("S5 WAN first request", "round trips: 1st request after tunnel up (tunnel col); a new "
                 "connection through the proxy (direct col)", direct_first / rtt, first / rtt,
                 first / direct_first, fmt="{:.3f}")
        self.row("S5 WAN first request", "round trips: the next 5 requests, median (curl)", None, nexts / rtt,
                 fmt="{:.3f}")
