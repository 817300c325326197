"""S11: the S3 probe through the plain cluster's tunnel, idle and while wrk floods the server's
proxy-extensions listener for the same cluster (optionally pinned to separate CPUs, --pin)."""

import os
import statistics
import threading
import time

from ..clients import extension_counts, wrk, wrk_url
from ..common import EXTENSION, log
from ..measure import Measure
from ..procs import count_lines_from, file_size


class ExtensionFlood:
    """Mixin of scenarios.Run."""

    def flood_probe(self, mode, loaded, ext_url, header_args, label):
        """The S3 probe on the plain cluster (`mode` tunnel or direct), alone or while wrk -t2
        -c<flood_connections> floods the extensions listener (started 0.5 s before, ending 0.5 s
        after)."""
        setup, args = self.setup, self.args
        flood = {}

        def flood_loop():
            try:
                flood["result"] = wrk_url(ext_url, header_args, 2, args.flood_connections, args.duration + 1,
                                          non2xx_ok=True, prefix=setup.client_cpu("load"))
            except Exception as error:
                flood["error"] = str(error)

        before = extension_counts(setup)
        log_path = setup.work / setup.server_log
        log_offset = file_size(log_path)
        thread = threading.Thread(target=flood_loop, daemon=True)
        with Measure(setup.cpu_pids("tunnel", "plain")) as m:
            if loaded:
                thread.start()
                time.sleep(0.5)
            try:
                result = wrk(setup, mode, "plain", 1, 1, args.duration, latency=True,
                             prefix=setup.client_cpu("tunnel"))
            finally:
                if loaded:
                    thread.join(timeout=args.duration + 70)
        setup.check_alive()
        name = f"S11 {mode} {'under flood' if loaded else 'idle'} #{label}"
        self.cpu_rows.append((name + (" (probe + flood)" if loaded else ""), m.percent()))
        self.fail_on_errors(f"S11 probe {mode} {'loaded' if loaded else 'idle'}", result)
        line = f"{name}: probe {result['rps']:.0f} req/s, p50 {result['p50']:.3f} ms, p99 {result['p99']:.3f} ms"
        if loaded:
            if "error" in flood or "result" not in flood:
                self.failures.append(f"S11 flood: {flood.get('error', 'did not finish')}")
                return result, None
            fr = flood["result"]
            after = extension_counts(setup)
            codes = {code: after.get(code, 0) - before.get(code, 0) for code in after}
            codes = {code: int(n) for code, n in codes.items() if n}
            log_lines = count_lines_from(log_path, log_offset)
            if fr["errors"]:
                self.failures.append(f"S11 flood: {'; '.join(fr['errors'])}")
            result["flood"] = {"seconds": fr["seconds"], "requests": fr["requests"], "non2xx": fr["non2xx"],
                               "codes": codes, "log_lines": log_lines}
            line += (f"; flood {fr['requests']} requests in {fr['seconds']:.2f} s ({fr['rps']:.0f}/s), wrk non-2xx "
                     f"{fr['non2xx']}; server counted by code {codes}; server log +{log_lines} lines "
                     f"[{fr['cmd']}]")
        self.raw.append(line)
        log(f"  {mode:6} plain {'flood' if loaded else 'idle '}: p50 {result['p50']:.3f} ms, p99 "
            f"{result['p99']:.3f} ms" + (f"; flood codes {result['flood']['codes']}" if loaded else ""))
        return result, m

    def s11_extension_flood(self):
        """S11, with --pin on separate CPUs: server, agents and the probe client on one, the
        flood client and nginx on another (so the flood's client and upstream do not compete with
        the probe for a core; the server still serves the flood, which is what S11 measures)."""
        setup, args = self.setup, self.args
        plan = None
        if args.pin:
            cpus = sorted(os.sched_getaffinity(0))
            if len(cpus) >= 2:
                plan = {"tunnel": cpus[0], "load": cpus[1]}
                log(f"S11 pinned: server, agents and the probe client on CPU {plan['tunnel']}; the flood client "
                    f"and nginx on CPU {plan['load']}")
                setup.pin(plan)
            else:
                log(f"--pin: only {len(cpus)} CPU available, S11 runs unpinned")
        try:
            self.s11_body(" (pinned)" if plan else "")
        finally:
            setup.unpin()

    def s11_body(self, suffix):
        setup, args = self.setup, self.args
        ext_url = f"http://{setup.extensions_addr}/small"
        header_args = [arg for key, value in setup.extension_headers().items() for arg in ("-H", f"{key}: {value}")]
        modes = ("tunnel",) if args.smoke else ("tunnel", "direct")
        log(f"S11 extension flood: S3 probe (tunnel plain /small) idle and while wrk -t2 "
            f"-c{args.flood_connections} floods "
            f"{ext_url} (extension {EXTENSION} → cluster plain, max_concurrent 16)"
            + ("; then the same with the probe direct to nginx (control)" if "direct" in modes else ""))
        results = {}
        for mode in modes:
            for r in range(args.rounds):
                for loaded in ((False, True) if r % 2 == 0 else (True, False)):
                    result, _ = self.flood_probe(mode, loaded, ext_url, header_args, r + 1)
                    results.setdefault((mode, loaded), []).append(result)
        mean = lambda mode, loaded, key: statistics.mean(x[key] for x in results[(mode, loaded)])
        scenario = "S11 extension flood" + suffix
        for pct in ("p50", "p99"):
            idle, loaded = mean("tunnel", False, pct), mean("tunnel", True, pct)
            bar = ("≤ 2×", loaded / idle <= 2) if pct == "p99" else (None, None)
            self.row(scenario, f"tunnel plain {pct} ms: idle (direct col) vs under the flood (tunnel col)",
                     idle, loaded, loaded / idle, *bar, fmt="{:.3f}")
        self.row(scenario, "probe req/s: idle vs under the flood", mean("tunnel", False, "rps"),
                 mean("tunnel", True, "rps"), mean("tunnel", True, "rps") / mean("tunnel", False, "rps"))
        # The floods during the tunnel probe (the control's floods are in the raw lines).
        floods = [x["flood"] for x in results[("tunnel", True)] if "flood" in x]
        if floods:
            seconds = sum(f["seconds"] for f in floods)
            codes = {}
            for f in floods:
                for code, n in f["codes"].items():
                    codes[code] = codes.get(code, 0) + n
            total = sum(codes.values())
            for code in sorted(codes):
                self.row(scenario, f"flood answers {code} per s (ratio col: share of all answers)", None,
                         codes[code] / seconds, codes[code] / total if total else None)
            self.row(scenario, "flood: all answers per s", None, total / seconds)
            self.row(scenario, "server log lines per s during the flood", None,
                     sum(f["log_lines"] for f in floods) / seconds)
        if "direct" in modes:
            idle, loaded = mean("direct", False, "p99"), mean("direct", True, "p99")
            self.row("S11 control" + suffix, "DIRECT p99 ms: idle (direct col) vs under the same flood (tunnel col)",
                     idle, loaded, loaded / idle, fmt="{:.3f}")
