"""How the binaries are configured and started outside the main setup: their environment
(RUST_LOG), [limits] tables merged from what a scenario needs and --limits / --server-limits,
and a server of a scenario's own (S7, S9), whose addresses come from its `listening` log line."""

import os
import subprocess
from pathlib import Path

from .procs import PROCS, wait_for_line


def process_env(args):
    env = dict(os.environ, RUST_LOG=args.rust_log)
    env.pop("ARGOCD_PROXY_LOG_FORMAT", None)
    return env


def merged_limits(args, base, server):
    """What a scenario needs (`base`), then --limits and, for a server, --server-limits on top
    (a later value of a key wins)."""
    items = {key: str(value) for key, value in base.items()}
    for item in list(args.limits or []) + (list(args.server_limits or []) if server else []):
        key, value = (part.strip() for part in item.split("=", 1))
        items[key] = value
    return items


def limits_toml(args, base, server):
    """A [limits] table of merged_limits (TOML never sees a key twice)."""
    items = merged_limits(args, base, server)
    if not items:
        return ""
    return "\n[limits]\n" + "".join(f"{key} = {value}\n" for key, value in items.items())


LISTENING = r"public=([0-9.:]+) internal=([0-9.:]+) ops=Some\(([0-9.:]+)\)"


def start_own_server(args, work, tag, config, timeout=60.0):
    """Starts a server of a scenario's own (S7, S9) with `config` (the listeners on ports the OS
    chooses); returns (Popen, log path, public, internal, ops)."""
    path = work / f"{tag}-server.toml"
    path.write_text(config)
    log_path = work / f"{tag}-server.log"
    proc = PROCS.start(f"argocd-proxy-server ({tag})",
                       [str(Path(args.bin_dir) / "argocd-proxy-server"), "--config", str(path)],
                       stdout=open(log_path, "w"), stderr=subprocess.STDOUT, env=process_env(args))
    match = wait_for_line(log_path, LISTENING, proc, f"argocd-proxy-server ({tag})", timeout=timeout)
    return (proc, log_path, *match.groups())
