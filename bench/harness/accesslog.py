"""Where a request's time went, from the access lines both processes write at `info` (the
server's `proxy … duration_ms=` and the agent's `proxied … duration_ms=`, text format).

S4's probe runs one request at a time, so each server line pairs with the agent's latest line
before it: the gap between the two timestamps is the answer's return path (the agent's writer,
the tunnel's sockets, the server's reader), which is where a bulk stream's bytes can queue ahead
of it. The agent's own `duration_ms` is its upstream's hop (nginx). Both processes stamp lines
with the same clock, to the microsecond.
"""

import bisect
import datetime
import re

LINE = re.compile(r"^(\S+)\s+INFO\s+(\S+): (proxy|proxied) .*?path=(\S+) .*?duration_ms=(\d+)")


def _lines(path, word, suffix, since, until):
    """(unix time, duration_ms) of the access lines `word` for paths ending in `suffix`."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        match = LINE.match(line)
        if not match or match.group(3) != word or not match.group(4).endswith(suffix):
            continue
        stamp = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
        if since <= stamp <= until:
            out.append((stamp, int(match.group(5))))
    return out


def _quantile(values, q):
    return values[min(len(values) - 1, int(q * len(values)))]


def probe_hops(server_log, agent_log, suffix, since, until):
    """For one-at-a-time requests to paths ending in `suffix` between the unix times `since` and
    `until`: {"requests", "return_p50", "return_p99", "return_max" (ms), "upstream_p99" (whole
    ms)}, or None when the lines are missing (RUST_LOG without the access lines, JSON logs)."""
    server = _lines(server_log, "proxy", suffix, since, until)
    # The agent's line for the first request in the window can come just before it.
    agent = _lines(agent_log, "proxied", suffix, since - 1.0, until)
    if not server or not agent:
        return None
    agent_times = [stamp for stamp, _ in agent]
    gaps = []
    for stamp, _ in server:
        index = bisect.bisect_right(agent_times, stamp) - 1
        if index >= 0:
            gaps.append((stamp - agent_times[index]) * 1000.0)
    if not gaps:
        return None
    gaps.sort()
    upstream = sorted(duration for _, duration in agent)
    return {
        "requests": len(server),
        "return_p50": _quantile(gaps, 0.5),
        "return_p99": _quantile(gaps, 0.99),
        "return_max": gaps[-1],
        "upstream_p99": _quantile(upstream, 0.99),
    }
