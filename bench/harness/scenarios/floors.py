"""F: the floors, what the libraries cost before any of the project's code (the examples/floors
binary), so a bar below a floor is argued with numbers. Needs no server."""

import json
import statistics

from ..common import MiB, Broken, log
from ..procs import nofile_hard, run_client


class Floors:
    """Mixin of scenarios.Run."""

    def floors(self):
        """F: what the libraries cost before any of our code (examples/floors/), so a bar below
        a floor is argued with numbers. Wire: one direction through one loopback connection,
        tcp / rustls / tungstenite / rustls + tungstenite / tcp through two copying relays, --bulk-repeats rounds interleaved, medians (S1's
        ceiling). Idle: RSS per idle watch-like stream with plain tasks on both ends (the
        control), then with a hyper HTTP/1 server or client connection on one end (S9's floor),
        and all on one HTTP/2 connection, each in a process of its own. Heartbeat: the CPU a bare
        single-threaded server spends answering one Ping-sized message per connection every 10 s
        (S7's floor)."""
        args = self.args
        floors = self.setup.bin / "examples" / "floors"
        if not floors.is_file():
            raise Broken(f"{floors} not found (cargo build --release --example floors)")

        def measure(*argv):
            code, out, err = run_client([str(floors), *argv], timeout=300)
            if code != 0:
                raise Broken(f"floors {' '.join(argv)} failed: {err.strip()[-500:]}")
            return json.loads(out.strip().splitlines()[-1])

        mib = str(max(1, args.size // MiB))
        wire = {"tcp": [], "tls": [], "ws": [], "tls-ws": [], "relay": []}
        for _ in range(args.bulk_repeats):
            for kind in wire:
                wire[kind].append(measure("wire", kind, mib)["mb_per_s"])
        median = {kind: statistics.median(values) for kind, values in wire.items()}
        log("  F wire MB/s: " + ", ".join(f"{kind} {values}" for kind, values in wire.items()))
        label = "F floors"
        for kind, what in (("tls", "rustls"), ("ws", "tungstenite, 64 KiB messages (the bench's ws:// tunnel)"),
                           ("tls-ws", "rustls + tungstenite (a wss:// tunnel)"),
                           ("relay", "plain TCP through two copying relays (S1's three connections)")):
            self.row(label, f"one direction, one loopback connection, {mib} MiB, MB/s: plain TCP (direct col) vs "
                     f"{what} (tunnel col)", median["tcp"], median[kind], median[kind] / median["tcp"])
        # Both ends of every stream live in the one floors process: two descriptors per stream.
        streams = str(min(args.s9_streams, (nofile_hard() - 256) // 2))
        idle = {kind: measure("idle", kind, streams) for kind in ("raw", "hyper-server", "hyper-client", "h2")}
        log("  F idle KiB per stream: " + ", ".join(f"{kind} {v['kib_per_stream']}" for kind, v in idle.items()))
        control = idle["raw"]["kib_per_stream"]
        self.row(label, f"RSS KiB per idle watch stream ({streams}), both ends plain tokio tasks (the control)",
                 None, control, fmt="{:.2f}")
        extra = {}
        for kind, what in (("hyper-server", "server"), ("hyper-client", "client")):
            extra[kind] = idle[kind]["kib_per_stream"] - control
            self.row(label, f"RSS KiB per idle stream that one hyper HTTP/1 {what} connection adds to the control",
                     None, extra[kind], fmt="{:.2f}")
        self.row(label, "floor of an idle relayed stream with one hyper server and one hyper client connection "
                 "(S9's server holds both; S9's bar is 4 KiB)", None, extra["hyper-server"] + extra["hyper-client"],
                 fmt="{:.2f}")
        self.row(label, "RSS KiB per idle stream, all on one HTTP/2 connection, hyper at both ends (both counted)",
                 None, idle["h2"]["kib_per_stream"], fmt="{:.2f}")
        # S7's floor: a bare single-threaded server answering one small message per connection
        # every 10 s (agents pinging at independent times), no WebSocket, mux or TLS.
        sessions = min(args.s7_sessions[-1], (nofile_hard() - 256) // 2)
        beat = measure("heartbeat", str(sessions), str(args.s7_idle))
        log(f"  F heartbeat: {beat}")
        self.row(label, f"server CPU % of a core answering {sessions} plain TCP connections pinging every 10 s "
                 f"(S7's floor; S7's bar is 2% at 10,000)", None, beat["server_cpu_percent"], fmt="{:.2f}")
        self.row(label, "server CPU µs per answered ping in that floor", None, beat["server_us_per_exchange"],
                 fmt="{:.1f}")
