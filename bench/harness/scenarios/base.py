"""What every scenario writes to (rows, CPU rows, raw lines, failures, memory readings), the
functional checks of the main setup before anything is timed, and the memory rows at its end."""

from ..clients import http_get
from ..common import SA_TOKEN, SMALL, Broken, log
from ..measure import status_kib


class RunBase:
    """The state every scenario writes to, and the checks around them; the last base of scenarios.Run."""

    def __init__(self, args, setup):
        self.args = args
        self.setup = setup
        self.rows = []  # (scenario, metric, direct, tunnel, ratio, bar, met)
        self.cpu_rows = []  # (measurement, {process: %})
        self.raw = []  # free-form lines
        self.failures = []
        self.memory = {}
        self.file_backed = {}  # label -> {process: RssFile KiB}
        self.s1 = {}
        self.s3 = {}
        self.s3_direct = {}

    def row(self, scenario, metric, direct, tunnel, ratio=None, bar=None, met=None, fmt="{:.0f}"):
        self.rows.append((scenario, metric, direct, tunnel, ratio, bar, met, fmt))

    def fail_on_errors(self, what, result):
        if result["errors"]:
            self.failures.append(f"{what}: {'; '.join(result['errors'])}")
            log(f"  FAILURE {what}: {result['errors']}")

    def order(self, round_index, modes=("direct", "tunnel")):
        # Rotate which mode goes first (ABBA for two) so slow drifts (other load on the box) cancel out.
        turn = round_index % len(modes)
        return modes[turn:] + modes[:turn]

    def record_memory(self, label):
        setup = self.setup
        pids = {"server": setup.server.pid, **{f"agent {cluster}": proc.pid for cluster, proc in setup.agents.items()}}
        self.memory[label] = {name: status_kib(pid, "VmRSS") for name, pid in pids.items()}
        # Of it, the file-backed pages: the binary's code and read-only data (and a dynamic
        # build's shared libraries), clean, shared by every process running them, dropped under
        # memory pressure; most of an idle static build.
        if label == "idle after startup":  # the only rows that show it
            self.file_backed[label] = {name: status_kib(pid, "RssFile") for name, pid in pids.items()}
        log(f"RSS {label}: " + ", ".join(f"{k} {v / 1024:.1f} MiB" for k, v in self.memory[label].items()))

    def sanity(self):
        """Functional checks before timing anything: both paths answer /small correctly, the TLS
        upstream refuses requests without the token and the agent injects it, and the `h2` agent
        speaks HTTP/2 to its upstream (the `tls` one HTTP/1.1)."""
        setup = self.setup
        ca = setup.work / "ca.pem"
        expect = SMALL.encode()
        checks = [
            ("direct plain /small", setup.url("direct", "plain", "/small"), {}, None, 200, expect),
            ("tunnel plain /small", setup.url("tunnel", "plain", "/small"), {}, None, 200, expect),
            ("direct tls /small without token", setup.url("direct", "tls", "/small"), {}, ca, 401, None),
            ("direct tls /small with token", setup.url("direct", "tls", "/small"),
             {"Authorization": f"Bearer {SA_TOKEN}"}, ca, 200, expect),
            ("tunnel tls /small (agent injects token)", setup.url("tunnel", "tls", "/small"), {}, None, 200, expect),
            ("tunnel h2 /small (agent injects token)", setup.url("tunnel", "h2", "/small"), {}, None, 200, expect),
            ("tunnel tls /protocol", setup.url("tunnel", "tls", "/protocol"), {}, None, 200, b"HTTP/1.1"),
            ("tunnel h2 /protocol (the agent's pooled client speaks HTTP/2)", setup.url("tunnel", "h2", "/protocol"),
             {}, None, 200, b"HTTP/2.0"),
        ]
        if setup.extensions:
            url = f"http://{setup.extensions_addr}/small"
            checks += [
                ("extension /small (server [[extension]] -> agent [[backend]])", url, setup.extension_headers(),
                 None, 200, expect),
                ("extension /small with a wrong secret", url,
                 dict(setup.extension_headers(), **{"X-Argocd-Proxy-Secret": "wrong"}), None, 401, None),
            ]
        for name, url, headers, cafile, want_status, want_body in checks:
            status, body = http_get(url, headers=headers, cafile=cafile)
            if status != want_status or (want_body is not None and body != want_body):
                raise Broken(f"sanity check {name}: HTTP {status}, body {body[:200]!r}")
        log("sanity checks passed (bodies, 401 without token, token injected by the agent, HTTP/2 to the h2 upstream)")

    def memory_rows(self):
        for label in [label for label in ("idle after startup", "after S2", "during S4 (peak)")
                      if label in self.memory]:
            for proc, kib in self.memory[label].items():
                bar = met = None
                if label == "idle after startup":  # S6's idle bars
                    limit = 5 if proc == "server" else 4
                    bar, met = f"≤ {limit} MiB", kib / 1024 <= limit
                self.row("memory", f"{proc} RSS MiB, {label}", None, kib / 1024, None, bar, met, fmt="{:.1f}")
                if label == "idle after startup":
                    self.row("memory", f"{proc} RSS MiB, {label}: of it file-backed (RssFile: the binary, shared libraries)", None,
                             self.file_backed[label][proc] / 1024, fmt="{:.1f}")
        setup = self.setup
        for proc_name, proc in (("server", setup.server),
                                *((f"agent {cluster}", proc) for cluster, proc in setup.agents.items())):
            self.row("memory", f"{proc_name} peak RSS MiB (VmHWM, whole run)", None,
                     status_kib(proc.pid, "VmHWM") / 1024, fmt="{:.1f}")
