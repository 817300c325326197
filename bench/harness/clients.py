"""Load clients and HTTP reads: curl (timed and verified bulk downloads, single requests), wrk
(and the parsing of its output), and GETs of the servers' ops /metrics and the helpers' /stats.
curl and wrk run as processes (PROCS) so their CPU shows up as the client's."""

import json
import re
import shlex
import subprocess
import urllib.error
import urllib.request

from .common import EXTENSION, Broken, log
from .procs import PROCS, run_client


def wait_readyz(ops, cluster, check_alive, timeout, prefix=""):
    """Polls the server's ops /readyz?cluster= until it answers 200 (each poll after
    `check_alive()`, which raises when a process died); Broken after `timeout` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        check_alive()
        try:
            status, _ = http_get(f"http://{ops}/readyz?cluster={cluster}", timeout=1)
        except OSError:
            status = None
        if status == 200:
            return
        if time.monotonic() > deadline:
            raise Broken(f"{prefix}/readyz?cluster={cluster} not 200 after {timeout:.0f} s (last: {status})")
        time.sleep(0.05)


def http_get(url, headers=None, cafile=None, timeout=5.0):
    """(status, body) of a GET; HTTP errors are returned, not raised."""
    import ssl

    context = ssl.create_default_context(cafile=str(cafile)) if cafile else None
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def metric_value(ops, name, labels=None):
    """The sum of the series `name` (whose labels include `labels`) on a server's ops /metrics,
    or None when it has no such series."""
    status, body = http_get(f"http://{ops}/metrics", timeout=10)
    if status != 200:
        raise Broken(f"GET http://{ops}/metrics: HTTP {status}")
    total = None
    for found, value in re.findall(rf"^{name}(?:\{{([^}}]*)\}})?\s+(\S+)$", body.decode(), re.M):
        have = dict(re.findall(r'(\w+)="([^"]*)"', found))
        if all(have.get(key) == want for key, want in (labels or {}).items()):
            total = (total or 0.0) + float(value)
    return total


def json_get(url):
    """The JSON body of a GET that must answer 200 (bench/watches.py's /stats)."""
    status, body = http_get(url, timeout=10)
    if status != 200:
        raise Broken(f"GET {url}: HTTP {status}, body {body[:200]!r}")
    return json.loads(body)


def curl_bulk(setup, mode, cluster, max_time, path="/big.bin"):
    """One timed download of `path` (big.bin) to /dev/null: (http_code, bytes, seconds, curl
    exit code)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{size_download} %{time_total}",
           "--max-time", f"{max_time:.2f}", *setup.curl_options(mode, cluster)]
    cmd.append(setup.url(mode, cluster, path))
    code, out, err = run_client(cmd, timeout=max_time + 30)
    parts = out.split()
    if len(parts) != 3:
        raise Broken(f"curl {mode} {cluster}: exit {code}, output {out!r} {err.strip()}")
    return int(parts[0]), int(parts[1]), float(parts[2]), code


def verify_bulk(setup, mode, cluster):
    """Downloads big.bin through sha256sum; raises Broken unless byte-exact."""
    cmd = ["curl", "-sS", "-f", "--max-time", str(setup.args.bulk_timeout), *setup.curl_options(mode, cluster)]
    cmd.append(setup.url(mode, cluster, "/big.bin"))
    curl = PROCS.start("curl", cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    summer = PROCS.start("sha256sum", ["sha256sum"], stdin=curl.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    curl.stdout.close()
    try:
        out, _ = summer.communicate(timeout=setup.args.bulk_timeout + 30)
        _, curl_err = curl.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        PROCS.stop(curl)
        PROCS.stop(summer)
        raise Broken(f"verification download {mode} {cluster} timed out")
    except BaseException:
        PROCS.stop(curl)
        PROCS.stop(summer)
        raise
    PROCS.forget(curl)
    PROCS.forget(summer)
    digest = out.decode().split()[0] if out else ""
    if curl.returncode != 0 or digest != setup.sha256:
        raise Broken(f"{mode} {cluster}: download not byte-exact (curl exit {curl.returncode}, "
                     f"{curl_err.decode().strip()}; sha256 {digest or '-'} != {setup.sha256})")
    log(f"  {mode:6} {cluster:5}: {setup.size} bytes byte-exact (sha256 {digest[:16]}...)")


UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def parse_duration_ms(text):
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text)
    return float(match.group(1)) * UNITS[match.group(2)]


def wrk(setup, mode, cluster, threads, connections, duration, latency=False, prefix=()):
    """Runs wrk against /small; returns dict(rps, requests, p50, p99 in ms, errors)."""
    return wrk_url(setup.url(mode, cluster, "/small"), setup.auth(mode, cluster), threads, connections, duration,
                   latency, prefix=prefix)


def wrk_url(url, header_args, threads, connections, duration, latency=False, non2xx_ok=False, prefix=()):
    """Runs wrk against `url`; returns dict(rps, requests, seconds, p50, p99 in ms, non2xx, errors).
    Non-2xx answers are errors unless `non2xx_ok` (then only counted). `prefix`: e.g. taskset."""
    cmd = [*prefix, "wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", *header_args]
    if latency:
        cmd.append("--latency")
    cmd.append(url)
    code, out, err = run_client(cmd, timeout=duration + 60)
    result = {"cmd": shlex.join(cmd), "errors": [], "non2xx": 0}
    if code != 0:
        raise Broken(f"{shlex.join(cmd)}: exit {code}: {err.strip()} {out.strip()}")
    match = re.search(r"Requests/sec:\s+([0-9.]+)", out)
    requests = re.search(r"(\d+) requests in ([0-9.]+\w+)", out)
    if not match or not requests:
        raise Broken(f"unparseable wrk output:\n{out}\n{err}")
    result["rps"] = float(match.group(1))
    result["requests"] = int(requests.group(1))
    result["seconds"] = parse_duration_ms(requests.group(2)) / 1e3
    for pct in ("50", "99"):
        found = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if found:
            result["p" + pct] = parse_duration_ms(found.group(1))
        elif latency:
            raise Broken(f"no {pct}% latency in wrk output:\n{out}")
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if sock and any(int(n) for n in sock.groups()):
        result["errors"].append(sock.group(0))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        result["non2xx"] = int(non2xx.group(1))
        if not non2xx_ok:
            result["errors"].append(non2xx.group(0))
    if result["requests"] == 0:
        result["errors"].append("no request completed")
    return result


def curl_once(url, timeout=30):
    """One GET on a new client connection: (http_code, seconds)."""
    cmd = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", str(timeout), url]
    code, out, err = run_client(cmd, timeout=timeout + 10)
    parts = out.split()
    if code != 0 or len(parts) != 2:
        raise Broken(f"{shlex.join(cmd)}: exit {code}, output {out!r} {err.strip()}")
    return int(parts[0]), float(parts[1])


def extension_counts(setup):
    """{code: count} of extension_requests_total{extension=bench,cluster=plain} (ops /metrics)."""
    status, body = http_get(f"http://{setup.ops}/metrics")
    if status != 200:
        raise Broken(f"GET /metrics on the ops listener: HTTP {status}")
    counts = {}
    for labels, value in re.findall(r"^\w*extension_requests_total\{([^}]*)\}\s+(\S+)$", body.decode(), re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if labels.get("extension") == EXTENSION and labels.get("cluster") == "plain":
            counts[labels.get("code", "?")] = counts.get(labels.get("code", "?"), 0) + float(value)
    return counts
