"""S6: a client reads a download through the tunnel slowly; the server's and agent's memory must
stay flat (backpressure, not buffering) and the download byte-exact."""

import hashlib
import socket
import time

from ..common import MiB, Broken, log
from ..measure import RssSampler


class SlowReader:
    """Mixin of scenarios.Run."""

    def s6_slow_reader(self):
        """A client reads big.bin through the tunnel at --slow-rate MB/s for --slow-seconds (its
        socket's receive buffer capped at 256 KiB, so the backpressure reaches the server at
        once), then the rest at full speed; the server's and the agent's RSS are sampled from
        /proc every 50 ms. The download must be byte-exact (no cut)."""
        setup, args = self.setup, self.args
        rate = args.slow_rate * 1e6
        log(f"S6 slow reader: tunnel plain /big.bin read at {args.slow_rate:g} MB/s for up to {args.slow_seconds:g} s, "
            f"then at full speed; server and agent RSS sampled every 50 ms")
        host, port = setup.internal.rsplit(":", 1)
        pids = {"server": setup.server.pid, "agent": setup.agents["plain"].pid}
        digest = hashlib.sha256()
        received = 0
        cut = None
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)  # before connect: caps the window
        sock.settimeout(60)
        import http.client

        with RssSampler(pids) as rss:
            throttled_at = None
            try:
                sock.connect((host, int(port)))
                sock.sendall(f"GET /tunnel/plain/big.bin HTTP/1.1\r\nHost: {setup.internal}\r\n"
                             f"Connection: close\r\n\r\n".encode())
                response = http.client.HTTPResponse(sock)
                response.begin()
                if response.status != 200:
                    raise Broken(f"S6 slow reader: HTTP {response.status}")
                started = time.monotonic()
                # Token bucket: at most `rate` bytes per second since the start, read in ≤ 64 KiB
                # pieces, waking every 5 ms.
                while received < setup.size:
                    elapsed = time.monotonic() - started
                    if elapsed >= args.slow_seconds:
                        break
                    allowed = int(rate * elapsed) - received
                    if allowed < 16 * 1024:
                        time.sleep(0.005)
                        continue
                    chunk = response.read(min(allowed, 64 * 1024))
                    if not chunk:
                        break
                    digest.update(chunk)
                    received += len(chunk)
                throttled_at = (time.monotonic() - started, received)
                peak_throttled = dict(rss.peak)
                while True:
                    chunk = response.read(MiB)
                    if not chunk:
                        break
                    digest.update(chunk)
                    received += len(chunk)
            except (OSError, http.client.HTTPException) as error:
                cut = f"{type(error).__name__}: {error}"
            finally:
                sock.close()
        setup.check_alive()
        exact = cut is None and received == setup.size and digest.hexdigest() == setup.sha256
        if throttled_at is None:
            throttled_at = (0.0, received)
            peak_throttled = dict(rss.peak)
        seconds, slow_bytes = throttled_at
        growth = {name: (peak_throttled[name] - rss.first[name]) / 1024 for name in pids}
        growth_all = {name: (rss.peak[name] - rss.first[name]) / 1024 for name in pids}
        self.raw.append(f"S6 slow reader: {slow_bytes} bytes in {seconds:.2f} s throttled "
                        f"({slow_bytes / 1e6 / max(seconds, 1e-9):.1f} MB/s), {received} of {setup.size} bytes in all, "
                        f"byte-exact {exact}{'' if cut is None else ', cut: ' + cut}; RSS KiB before / peak while "
                        f"throttled / peak / after: " + "; ".join(
                            f"{n} {rss.first[n]} / {peak_throttled[n]} / {rss.peak[n]} / {rss.last[n]}" for n in pids)
                        + f" ({rss.samples} samples)")
        log(f"  {slow_bytes / 1e6:.0f} MB in {seconds:.1f} s throttled, then the rest: {received} bytes, "
            f"byte-exact {exact}; server RSS +{growth['server']:.1f} MiB, agent +{growth['agent']:.1f} MiB "
            f"(peak while throttled)")
        if not exact:
            self.failures.append(f"S6 slow reader: download not byte-exact ({received} of {setup.size} bytes"
                                 f"{'' if cut is None else ', ' + cut})")
        label = "S6 slow reader"
        self.row(label, f"throttled phase: seconds (direct col), MB/s read (tunnel col; target {args.slow_rate:g})",
                 seconds, slow_bytes / 1e6 / max(seconds, 1e-9), fmt="{:.1f}")
        self.row(label, "server RSS MiB: before (direct col) vs peak while throttled (tunnel col)",
                 rss.first["server"] / 1024, peak_throttled["server"] / 1024,
                 None, "growth ≤ 16 MiB", growth["server"] <= 16, fmt="{:.1f}")
        self.row(label, "server RSS growth MiB: while throttled (direct col), whole download (tunnel col)",
                 growth["server"], growth_all["server"], fmt="{:.1f}")
        self.row(label, "agent RSS growth MiB: while throttled (direct col), whole download (tunnel col)",
                 growth["agent"], growth_all["agent"], fmt="{:.1f}")
        self.row(label, "download complete and byte-exact (1 = yes)", None, 1.0 if exact else 0.0,
                 None, "no cut", exact)
