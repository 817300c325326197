"""The command line of bench/run: its flags, and the defaults that differ between a full run and
--smoke (filled in here, so the scenarios read plain numbers)."""

import argparse
import re

from .common import GiB, MiB, REPO, SCENARIOS


def parse_args():
    parser = argparse.ArgumentParser(description="argocd-proxy benchmark: direct vs tunnel (docs/benchmarks.md)")
    parser.add_argument("--smoke", action="store_true", help="CI mode: 64 MiB file, 2 s per measurement, no bars")
    parser.add_argument("--duration", type=int, help="seconds per wrk measurement (full 10, smoke 2)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved direct/tunnel rounds per wrk scenario (each round starts with "
                        "the next mode: S2's three modes need 3 rounds to cancel a drift)")
    parser.add_argument("--size", type=str, help="bulk file size, e.g. 1G, 64M (full 1G, smoke 64M)")
    parser.add_argument("--bulk-repeats", type=int, help="timed downloads per mode in S1 (full 3, smoke 1)")
    parser.add_argument("--bulk-timeout", type=int, default=300, help="seconds allowed for one bulk download")
    parser.add_argument("--nginx-workers", type=int, default=2)
    parser.add_argument("--rust-log", default="info",
                        help="RUST_LOG for server and agents (default info, as shipped; the harness reads the "
                             "info lines `listening` and `tunnel up`). Without per-request logs: "
                             "info,argocd_proxy::server::forward=warn,argocd_proxy::agent::forward=warn")
    parser.add_argument("--no-build", action="store_true", help="use existing binaries, do not run cargo build")
    parser.add_argument("--bin-dir", default=str(REPO / "target" / "release"))
    parser.add_argument("--only", default=",".join(SCENARIOS),
                        help=f"comma-separated scenarios to run, of {','.join(SCENARIOS)} (S4 also runs S1 and S3, "
                             f"which it compares with)")
    parser.add_argument("--delay-ms", type=float, default=25.0,
                        help="S5/S10: delay the proxy between the wan agent and the server adds each way")
    parser.add_argument("--flood-connections", type=int, default=64,
                        help="S11: wrk connections flooding the extensions listener (max_concurrent is 16)")
    parser.add_argument("--proxy-lifetime", type=int, default=3600,
                        help="the delay proxy exits by itself after this many seconds (it is also stopped at the end)")
    parser.add_argument("--limits", action="append", metavar="KEY=VALUE",
                        help="add a [limits] key to the server and agent configs (experiments; repeatable)")
    parser.add_argument("--server-limits", action="append", metavar="KEY=VALUE",
                        help="add a [limits] key to the server config only (repeatable)")
    parser.add_argument("--pin", action="store_true",
                        help="S11: pin server, agents and the probe client to one CPU, the flood client and nginx "
                             "to another (needs ≥ 2 CPUs; taskset and sched_setaffinity)")
    parser.add_argument("--slow-rate", type=float, default=20.0, help="S6: the slow reader's rate in MB/s")
    parser.add_argument("--slow-seconds", type=float, default=10.0, help="S6: how long the reader stays slow")
    parser.add_argument("--restarts", type=int, help="S8: server restarts timed (full 5, smoke 1)")
    parser.add_argument("--restart-signal", choices=("TERM", "KILL"), default="TERM",
                        help="S8: how the server is stopped (TERM: graceful drain; KILL: a crash)")
    parser.add_argument("--restart-spacing", type=float,
                        help="S8: seconds of tunnel uptime before each restart after the first (full 31, smoke 0; "
                             "the agent's backoff resets after 30 s up)")
    parser.add_argument("--s7-sessions", type=str,
                        help="S7: comma-separated session counts, reached in turn on one server (full 1000,10000; "
                             "smoke 200); its public listener's max_connections_per_listener is raised to the last "
                             "+ 1024 (the default, 10000, would leave no room at 10,000 sessions)")
    parser.add_argument("--s7-idle", type=float,
                        help="S7: seconds of the idle window over which the server's CPU is measured (full 20, "
                             "smoke 2)")
    parser.add_argument("--s7-agent-ping", type=float, default=10.0,
                        help="S7: seconds between the tunnel Pings each fake agent sends, as a real agent does "
                             "(ours every 10 s, the Go one every 15 s); 0 makes agents that only answer the "
                             "server's Pings")
    parser.add_argument("--s9-streams", type=int,
                        help="S9: concurrent watch streams on one tunnel (full 10000, smoke 200); "
                             "max_streams_per_tunnel, tunnel_buffer and the server's max_connections_per_listener "
                             "are raised to fit")
    parser.add_argument("--s9-hold", type=float, help="S9: seconds the streams are held open (full 60, smoke 5)")
    parser.add_argument("--s9-interval", type=float,
                        help="S9: seconds between the upstream's chunks on each stream (full 10, smoke 2)")
    parser.add_argument("--pool-concurrency", type=int, default=200,
                        help="S7/S9: connects the agent pool and the watch clients have in flight at once")
    parser.add_argument("--helper-lifetime", type=int, default=900,
                        help="S7/S9: the agent pool and the watch upstream and clients exit by themselves after "
                             "this many seconds (they are also stopped when the scenario ends)")
    parser.add_argument("--tunnel-tls", action="store_true",
                        help="the server's public listener speaks TLS and the agents dial wss://, as in production "
                             "(the main setup and S7's fake agents; S9 keeps its own plain tunnel)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs) for inspection")
    args = parser.parse_args()
    args.only = {name.strip().upper() for name in args.only.split(",") if name.strip()}
    if not args.only <= set(SCENARIOS):
        parser.error(f"--only: a comma-separated subset of {','.join(SCENARIOS)}")
    if "S4" in args.only:
        args.only |= {"S1", "S3"}
    args.duration = args.duration or (2 if args.smoke else 10)
    args.bulk_repeats = args.bulk_repeats or (1 if args.smoke else 3)
    args.restarts = args.restarts or (1 if args.smoke else 5)
    if args.restart_spacing is None:
        args.restart_spacing = 0.0 if args.smoke else 31.0
    try:
        args.s7_sessions = sorted({int(n) for n in (args.s7_sessions or ("200" if args.smoke else "1000,10000"))
                                  .split(",") if n.strip()})
    except ValueError:
        parser.error("--s7-sessions: comma-separated integers")
    if not args.s7_sessions or args.s7_sessions[0] < 1:
        parser.error("--s7-sessions: positive integers")
    args.s7_idle = args.s7_idle or (2.0 if args.smoke else 20.0)
    args.s9_streams = args.s9_streams or (200 if args.smoke else 10000)
    args.s9_hold = args.s9_hold or (5.0 if args.smoke else 60.0)
    args.s9_interval = args.s9_interval or (2.0 if args.smoke else 10.0)
    if args.s9_hold < 2 * args.s9_interval:
        parser.error("--s9-hold must be at least twice --s9-interval (a live stream gets a chunk every interval)")
    size = args.size or ("64M" if args.smoke else "1G")
    match = re.fullmatch(r"(\d+)([KMG]?)", size)
    if not match:
        parser.error("--size: a number with an optional K, M or G suffix")
    args.size = int(match.group(1)) * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB}[match.group(2)]
    return args
