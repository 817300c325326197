"""The main setup that every scenario but F, S7 and S9 measures: nginx (plain and TLS upstream,
the TLS one also on a port offering HTTP/2), one server, an agent per cluster (plain, tls, h2,
and `wan` behind the delay proxy for S5/S10), the
extensions listener for S11; the URLs and client options for (mode, cluster), and --pin."""

import hashlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .clients import wait_readyz
from .common import BENCH, CLUSTERS, EXTENSION, SA_TOKEN, SMALL, TLS_CLUSTERS, WAN, Broken, log
from .config import limits_toml, process_env
from .prepare import make_certs, make_data
from .procs import PROCS, child_pids, free_port, set_affinity, tail, wait_for_line


class Setup:
    """Everything running: nginx, server, an agent per cluster; their addresses and processes."""

    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.bin = Path(args.bin_dir)
        self.wan = bool(args.only & {"S5", "S10"})  # a delay proxy and the `wan` cluster
        self.extensions = "S11" in args.only  # the extensions listener and the plain agent's backend
        self.delay_proxy = None
        self.agents = {}
        self.server_log = "server.log"
        self.server_starts = 0
        self.pinned = None  # {"tunnel": cpu, "load": cpu} while S11 runs with --pin
        self.relays = []  # S2's floor: two examples/floors relays chained in front of nginx plain
        self.relays_addr = None

    def check_binaries(self):
        for binary in ("argocd-proxy-server", "argocd-proxy-agent"):
            if not (self.bin / binary).is_file():
                raise Broken(f"{self.bin / binary} not found (build with cargo build --release --bins)")

    def start(self):
        work = self.work
        self.check_binaries()
        make_certs(work)
        self.data, self.sha256 = make_data(work, self.args.size)
        self.size = self.args.size
        self.start_nginx()
        self.start_server()
        if self.wan:
            self.start_delay_proxy()
        for cluster in CLUSTERS:
            self.agents[cluster] = self.start_agent(cluster)
        self.wait_ready(CLUSTERS)

    def start_wan_agent(self):
        """The `wan` agent dials the server through the delay proxy. Started when S5 or S10 first
        needs it, so S5 can time the first request after its tunnel comes up."""
        if WAN not in self.agents:
            self.agents[WAN] = self.start_agent(WAN)
            self.wait_ready([WAN])

    def start_delay_proxy(self):
        """bench/delayproxy.py: one listener to the server's public listener (the wan agent dials
        it) and one to nginx plain (the direct control of S5 and S10)."""
        work, args = self.work, self.args
        logfile = open(work / "delayproxy.log", "w")
        self.delay_proxy = PROCS.start(
            "delay proxy", [sys.executable, str(BENCH / "delayproxy.py"), "--delay-ms", str(args.delay_ms),
                            "--lifetime", str(args.proxy_lifetime), "--target", self.public,
                            "--target", f"127.0.0.1:{self.plain_port}"],
            stdout=logfile, stderr=subprocess.STDOUT)
        wait_for_line(work / "delayproxy.log", r"(?m)^ready$", self.delay_proxy, "delay proxy")
        ports = dict((target, port) for port, target in re.findall(
            r"listen 127\.0\.0\.1:(\d+) target (\S+)", (work / "delayproxy.log").read_text()))
        self.wan_public = f"127.0.0.1:{ports[self.public]}"
        self.wan_nginx = f"127.0.0.1:{ports[f'127.0.0.1:{self.plain_port}']}"
        log(f"delay proxy up ({args.delay_ms:g} ms each way): to server {self.wan_public}, to nginx plain "
            f"{self.wan_nginx}")

    def start_relays(self):
        """S2's floor (examples/floors/relay.rs): client -> relay -> relay -> nginx plain, two
        single-threaded processes copying bytes without parsing them, as the server and the agent
        relay a request. False when the floors example was not built."""
        floors = self.bin / "examples" / "floors"
        if self.relays_addr:
            return True
        if not floors.is_file():
            log(f"S2's floor skipped: {floors} not found (cargo build --release --example floors)")
            return False
        to = f"127.0.0.1:{self.plain_port}"
        for name in ("agent-side", "server-side"):
            log_path = self.work / f"relay-{name}.log"
            # They stop by themselves when the delay proxy would (--proxy-lifetime), and are
            # stopped with everything else at the end.
            lifetime = str(self.args.proxy_lifetime)
            proc = PROCS.start(f"floor relay ({name})", [str(floors), "relay", to, lifetime],
                               stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
            self.relays.append((proc, log_path.name))
            to = wait_for_line(log_path, r"listening (\S+)", proc, f"floor relay ({name})").group(1)
        self.relays_addr = to
        return True

    def start_nginx(self):
        work = self.work
        (work / "nginx-tmp").mkdir()
        for attempt in range(5):
            self.plain_port, self.tls_port, self.h2_port = free_port(), free_port(), free_port()
            conf = (BENCH / "nginx.conf.in").read_text()
            for key, value in {"DIR": str(work), "DATA": str(self.data), "PLAIN_PORT": str(self.plain_port),
                               "TLS_PORT": str(self.tls_port), "H2_PORT": str(self.h2_port), "SMALL": SMALL,
                               "SA_TOKEN": SA_TOKEN,
                               "WORKERS": str(self.args.nginx_workers)}.items():
                conf = conf.replace("{{" + key + "}}", value)
            (work / "nginx.conf").write_text(conf)
            logfile = open(work / "nginx.log", "w")
            self.nginx = PROCS.start("nginx", ["nginx", "-c", str(work / "nginx.conf"), "-p", f"{work}/"],
                                     stdout=logfile, stderr=subprocess.STDOUT)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.nginx.poll() is None:
                try:
                    for port in (self.plain_port, self.tls_port, self.h2_port):
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    self.nginx_workers = child_pids(self.nginx.pid)
                    if len(self.nginx_workers) >= self.args.nginx_workers:
                        log(f"nginx up: plain 127.0.0.1:{self.plain_port}, tls 127.0.0.1:{self.tls_port}, "
                            f"tls with h2 127.0.0.1:{self.h2_port}")
                        return
                except OSError:
                    pass
                time.sleep(0.05)
            log(f"nginx did not start (attempt {attempt + 1}):\n{tail(work / 'nginx.log')}\n{tail(work / 'nginx-error.log')}")
            PROCS.stop(self.nginx)
        raise Broken("nginx would not start")

    def start_server(self, fixed=False):
        """Starts the server. `fixed`: on the addresses the previous server had (S8 restarts it:
        agents and clients keep dialing the same ports), else on ports the OS chooses."""
        work = self.work
        clusters = ""
        for cluster in CLUSTERS + ((WAN,) if self.wan else ()):
            if not fixed:  # a restarted server keeps the agents' tokens
                (work / f"{cluster}.agent-token").write_text(f"bench-agent-token-{cluster}-{os.urandom(8).hex()}\n")
            clusters += (f'\n[[cluster]]\nid = "{cluster}"\ntoken_file = "{work}/{cluster}.agent-token"\n'
                         f'target = "127.0.0.1:{self.upstream_port(cluster)}"\n')
        extensions = ""
        env = self.env()
        notify = None
        if self.extensions:
            if not fixed:
                self.extension_secret = f"bench-extension-secret-{os.urandom(8).hex()}"
            digest = hashlib.sha256(self.extension_secret.encode()).hexdigest()
            extensions_listen = self.extensions_addr if fixed else "127.0.0.1:0"
            extensions = (f'\n[extensions]\nlisten = "{extensions_listen}"\nsecret_sha256 = "{digest}"\n'
                          f'\n[[extension]]\nname = "{EXTENSION}"\nclusters = ["plain"]\n')
            if not fixed:
                # The tracing line `listening` names public/internal/ops only; the extensions
                # address is in the sd_notify READY status, so the harness plays systemd's
                # notify socket.
                notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                notify.bind(str(work / "notify.sock"))
                env["NOTIFY_SOCKET"] = str(work / "notify.sock")
        public, internal, ops = (self.public, self.internal, self.ops) if fixed else ("127.0.0.1:0",) * 3
        # --tunnel-tls: the tunnel is wss://, as in production (the leaf names 127.0.0.1).
        public_tls = (f'tls_cert = "{work}/tls.pem"\ntls_key = "{work}/tls.key"\n'
                      if self.args.tunnel_tls else "")
        (work / "server.toml").write_text(
            f'[public]\nlisten = "{public}"\n{public_tls}[internal]\nlisten = "{internal}"\n'
            f'[ops]\nlisten = "{ops}"\n' + self.limits(server=True) + clusters + extensions)
        self.server_starts += 1
        self.server_log = "server.log" if self.server_starts == 1 else f"server-{self.server_starts}.log"
        logfile = open(work / self.server_log, "w")
        self.server = PROCS.start("argocd-proxy-server",
                                  [str(self.bin / "argocd-proxy-server"), "--config", str(work / "server.toml")],
                                  stdout=logfile, stderr=subprocess.STDOUT, env=env)
        match = wait_for_line(work / self.server_log,
                              r"public=([0-9.:]+) internal=([0-9.:]+) ops=Some\(([0-9.:]+)\)",
                              self.server, "argocd-proxy-server")
        if fixed:
            if match.groups() != (self.public, self.internal, self.ops):
                raise Broken(f"restarted server listens on {match.groups()}, not on {self.public, self.internal, self.ops}")
            return
        self.public, self.internal, self.ops = match.groups()
        log(f"server up: public {self.public}{' (TLS)' if self.args.tunnel_tls else ''}, internal {self.internal}, ops {self.ops}")
        if self.extensions:
            try:
                self.extensions_addr = self.extensions_address(match, notify)
            finally:
                notify.close()
                (work / "notify.sock").unlink(missing_ok=True)  # later notifications go nowhere
            log(f"server extensions listener: {self.extensions_addr}")

    def extensions_address(self, match, notify, timeout=10.0):
        """From the `listening` line if it has `extensions=Some(…)`, else from the sd_notify
        `READY=1` status (`listening: public …, internal …, ops …, extensions ADDR`)."""
        line = self.work.joinpath("server.log").read_text(errors="replace")[match.start():].split("\n", 1)[0]
        found = re.search(r"extensions=Some\(([0-9.:]+)\)", line)
        if found:
            return found.group(1)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            notify.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                message = notify.recv(4096).decode(errors="replace")
            except socket.timeout:
                break
            if "READY=1" in message:
                found = re.search(r"extensions ([0-9.:]+)", message)
                if found:
                    return found.group(1)
                raise Broken(f"server READY status names no extensions listener: {message!r}")
        raise Broken(f"no sd_notify READY=1 from the server within {timeout:.0f} s (extensions address unknown)")

    def start_agent(self, cluster):
        work = self.work
        (work / "sa.token").write_text(SA_TOKEN + "\n")
        if cluster in TLS_CLUSTERS:
            upstream = f'target = "127.0.0.1:{self.upstream_port(cluster)}"\nca_file = "{work}/ca.pem"\ntoken_file = "{work}/sa.token"\n'
        else:  # plain, wan
            upstream = f'target = "127.0.0.1:{self.plain_port}"\nplaintext = true\ninject_token = false\n'
        backends = ""
        if cluster == "plain" and self.extensions:
            backends = f'\n[[backend]]\nname = "{EXTENSION}"\ntarget = "127.0.0.1:{self.plain_port}"\n'
        server = self.wan_public if cluster == WAN else self.public
        config = work / f"agent-{cluster}.toml"
        if self.args.tunnel_tls:
            tunnel = f'server_url = "wss://{server}/connect"\nserver_ca = "{work}/ca.pem"\n'
        else:
            tunnel = f'server_url = "ws://{server}/connect"\nallow_insecure_server = true\n'
        config.write_text(
            tunnel +
            f'token_file = "{work}/{cluster}.agent-token"\nhealth_listen = "127.0.0.1:0"\n\n[upstream]\n' + upstream
            + self.limits() + backends)
        logfile = open(work / f"agent-{cluster}.log", "w")
        proc = PROCS.start(f"argocd-proxy-agent ({cluster})",
                           [str(self.bin / "argocd-proxy-agent"), "--config", str(config)],
                           stdout=logfile, stderr=subprocess.STDOUT, env=self.env())
        wait_for_line(work / f"agent-{cluster}.log", r"tunnel up", proc, f"agent {cluster}")
        return proc

    def upstream_port(self, cluster):
        """The nginx port a cluster's agent forwards to (`wan` forwards to plain nginx)."""
        return {"tls": self.tls_port, "h2": self.h2_port}.get(cluster, self.plain_port)

    def limits(self, server=False):
        """--limits KEY=VALUE overrides, for experiments (both binaries accept the same keys),
        and --server-limits KEY=VALUE for the server only (a key in both: the server's wins)."""
        return limits_toml(self.args, {}, server)

    def env(self):
        return process_env(self.args)

    def wait_ready(self, clusters, timeout=30.0):
        for cluster in clusters:
            wait_readyz(self.ops, cluster, self.check_alive, timeout)
        log(f"ready: {', '.join(clusters)}")

    def processes(self):
        """{name: (Popen, log file name)}"""
        procs = {"server": (self.server, self.server_log), "nginx": (self.nginx, "nginx-error.log")}
        for cluster, proc in self.agents.items():
            procs[f"agent {cluster}"] = (proc, f"agent-{cluster}.log")
        if self.delay_proxy:
            procs["delay proxy"] = (self.delay_proxy, "delayproxy.log")
        for index, relay in enumerate(self.relays):
            procs[f"floor relay {index + 1}"] = relay
        return procs

    def check_alive(self):
        for name, (proc, logname) in self.processes().items():
            if proc.poll() is not None:
                raise Broken(f"{name} (pid {proc.pid}) died with status {proc.returncode}:\n{tail(self.work / logname)}")

    def extension_headers(self):
        """What Argo CD sends to the extensions listener (docs/proxy-extensions.md)."""
        return {"X-Argocd-Proxy-Secret": self.extension_secret, "X-Argocd-Proxy-Extension": EXTENSION,
                "X-Argocd-Proxy-Cluster": "plain"}

    # URLs and client options for (mode, cluster). Cluster `wan`: "direct" is client -> delay
    # proxy -> nginx plain (the control), "tunnel" goes through the agent behind the delay proxy.
    def url(self, mode, cluster, path):
        if mode == "tunnel":
            return f"http://{self.internal}/tunnel/{cluster}{path}"
        if mode == "relays":  # S2's floor, plain only
            return f"http://{self.relays_addr}{path}"
        if cluster == WAN:
            return f"http://{self.wan_nginx}{path}"
        if cluster == "plain":
            return f"http://127.0.0.1:{self.plain_port}{path}"
        return f"https://127.0.0.1:{self.upstream_port(cluster)}{path}"

    def auth(self, mode, cluster):
        """The direct TLS upstream needs the bearer token the agent would inject."""
        return ["-H", f"Authorization: Bearer {SA_TOKEN}"] if mode == "direct" and cluster in TLS_CLUSTERS else []

    def curl_options(self, mode, cluster):
        """curl's options for a direct request to a TLS upstream: the token, the throwaway CA, and
        for `h2` HTTP/2 (what the agent speaks to it; wrk has no HTTP/2, so S2-S4 go direct over
        HTTP/1.1 to the same port)."""
        if mode != "direct" or cluster not in TLS_CLUSTERS:
            return []
        return [*self.auth(mode, cluster), "--cacert", str(self.work / "ca.pem"),
                *(["--http2"] if cluster == "h2" else [])]

    def cpu_pids(self, mode, cluster):
        """The processes whose CPU a measurement reports."""
        pids = {"nginx": [self.nginx.pid, *self.nginx_workers]}
        if mode == "tunnel":
            pids = {"server": [self.server.pid], "agent": [self.agents[cluster].pid], **pids}
        if mode == "relays":
            pids["relays"] = [proc.pid for proc, _ in self.relays]
        if cluster == WAN:
            pids["proxy"] = [self.delay_proxy.pid]
        return pids

    def pin(self, plan):
        """--pin: server and agents on plan["tunnel"], nginx (master and workers) on plan["load"]."""
        self.pinned = plan
        for proc in [self.server, *self.agents.values()]:
            set_affinity(proc.pid, {plan["tunnel"]})
        for pid in [self.nginx.pid, *self.nginx_workers]:
            set_affinity(pid, {plan["load"]})

    def unpin(self):
        if not self.pinned:
            return
        every = os.sched_getaffinity(0)
        for pid in [self.server.pid, *(p.pid for p in self.agents.values()), self.nginx.pid, *self.nginx_workers]:
            set_affinity(pid, every)
        self.pinned = None

    def client_cpu(self, role):
        """`taskset -c N` for a client process while pinned (role "tunnel" or "load"), else []."""
        return ["taskset", "-c", str(self.pinned[role])] if self.pinned else []

    def teardown(self):
        workers = list(getattr(self, "nginx_workers", []))
        PROCS.stop_all()
        for pid in workers:  # nginx workers normally exit with their master
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
