"""S8: the server is stopped and started again on the same ports; the agents reconnect by
themselves. Runs last, since it replaces the main setup's server process."""

import signal
import statistics
import subprocess
import time

from ..clients import http_get
from ..common import CLUSTERS, Broken, log
from ..procs import PROCS


class Restart:
    """Mixin of scenarios.Run."""

    def s8_restart(self):
        """Stops the server (--restart-signal, default TERM) and starts it again on the same ports;
        times the new server's start (its Popen) to the first 200 through /tunnel/plain/small,
        polled every 5 ms. The agents reconnect on their own (jittered backoff). Repeated
        --restarts times; before each restart after the first the harness waits until the tunnels
        have been up --restart-spacing s (the agent resets its backoff after 30 s up)."""
        setup, args = self.setup, self.args
        signum = {"TERM": signal.SIGTERM, "KILL": signal.SIGKILL}[args.restart_signal]
        log(f"S8 server restart: SIG{args.restart_signal} the server, start it on the same ports, time to the first "
            f"200 through /tunnel/plain; {args.restarts} time(s), {args.restart_spacing:g} s of tunnel uptime "
            f"before each")
        url = setup.url("tunnel", "plain", "/small")
        firsts, listens, exits, readies = [], [], [], []
        up_since = None
        for attempt in range(args.restarts):
            if up_since is not None:
                wait = args.restart_spacing - (time.monotonic() - up_since)
                if wait > 0:
                    time.sleep(wait)
            old = setup.server
            t_stop = time.monotonic()
            old.send_signal(signum)
            try:
                old.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.failures.append(f"S8: the server did not exit within 60 s of SIG{args.restart_signal}")
                old.kill()
                old.wait(timeout=5)
            exits.append(time.monotonic() - t_stop)
            PROCS.forget(old)
            if signum == signal.SIGTERM and old.returncode != 0:
                self.failures.append(f"S8: the server exited with status {old.returncode} after SIGTERM")
            t0 = time.monotonic()
            setup.start_server(fixed=True)
            listens.append(time.monotonic() - t0)
            first = None
            deadline = t0 + 60
            last = None
            while time.monotonic() < deadline:
                try:
                    status, _ = http_get(url, timeout=2)
                except OSError as error:
                    status = None
                    last = str(error)
                if status == 200:
                    first = time.monotonic() - t0
                    break
                last = status if status is not None else last
                time.sleep(0.005)
            if first is None:
                raise Broken(f"S8: no 200 through /tunnel/plain within 60 s of the restart (last: {last})")
            firsts.append(first)
            setup.wait_ready(CLUSTERS)
            readies.append(time.monotonic() - t0)
            up_since = t0 + first
            setup.check_alive()
            log(f"  restart {attempt + 1}: old server exited in {exits[-1] * 1e3:.0f} ms; new one listening after "
                f"{listens[-1] * 1e3:.0f} ms, first 200 after {first * 1e3:.0f} ms, all clusters ready after "
                f"{readies[-1] * 1e3:.0f} ms")
        self.raw.append("S8 restarts (ms): " + "; ".join(
            f"#{i + 1} exit {e * 1e3:.0f}, listening {l * 1e3:.0f}, first 200 {f * 1e3:.0f}, ready {r * 1e3:.0f}"
            for i, (e, l, f, r) in enumerate(zip(exits, listens, firsts, readies))))
        label = f"S8 server restart (SIG{args.restart_signal})"
        median = statistics.median(firsts) * 1e3
        self.row(label, f"ms from the new server's start to the first 200 through the tunnel: median of "
                 f"{len(firsts)} (direct col: max)", max(firsts) * 1e3, median, None, "median ≤ 500 ms",
                 median <= 500)
        self.row(label, "ms to listening (direct col), to every cluster ready (tunnel col), medians",
                 statistics.median(listens) * 1e3, statistics.median(readies) * 1e3)
        self.row(label, f"ms for the old server to exit after SIG{args.restart_signal}, median (max)",
                 max(exits) * 1e3, statistics.median(exits) * 1e3)
