"""Before anything runs: the tools the scenarios need (installed with apt-get when root), the
cargo build (unless --no-build), the test CA and leaf certificate, and the random bulk file with
its sha256 (every bulk download is checked byte-exact against it)."""

import hashlib
import os
import shlex
import shutil
import subprocess
from pathlib import Path

from .common import MiB, OWN_SETUP, REPO, Broken, log


def ensure_tools(args):
    main_setup = bool(args.only - OWN_SETUP)  # F, S7 and S9 alone need no nginx, wrk or curl
    missing = [tool for tool in ("nginx", "wrk") if main_setup and not shutil.which(tool)]
    for tool in ("curl", "openssl", "sha256sum"):
        # S9's HTTP/2 variant serves TLS, as S7 does with --tunnel-tls: openssl makes the certificates.
        own_tls = "S9" in args.only or ("S7" in args.only and args.tunnel_tls)
        needed = main_setup or (tool == "openssl" and own_tls)
        if needed and not shutil.which(tool):
            missing.append(tool)
    if missing:
        packages = sorted({"sha256sum": "coreutils"}.get(t, t) for t in missing)
        if os.geteuid() != 0:
            raise SystemExit(f"bench: missing {', '.join(missing)}; install: apt-get install -y {' '.join(packages)}")
        log(f"installing {' '.join(packages)} with apt-get")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        if subprocess.run(["apt-get", "install", "-y", *packages], env=env).returncode != 0:
            subprocess.run(["apt-get", "update"], env=env, check=True)
            subprocess.run(["apt-get", "install", "-y", *packages], env=env, check=True)
    # Debian installs nginx in /usr/sbin, which is not on every PATH.
    if not shutil.which("nginx") and Path("/usr/sbin/nginx").exists():
        os.environ["PATH"] += ":/usr/sbin"
    if args.no_build:
        return
    if not shutil.which("cargo"):
        raise SystemExit("bench: cargo not found (or pass --no-build with binaries in --bin-dir)")
    build = ["cargo", "build", "--release", "--bins", "--example", "floors", "--example", "h2watch"]
    log(shlex.join(build))
    if subprocess.run(build, cwd=REPO).returncode != 0:
        raise Broken(f"{shlex.join(build)} failed")


def make_certs(work, key="rsa"):
    """A CA and a leaf for localhost / 127.0.0.1 signed by it (rustls refuses CA certs as leaves),
    once per run: the scenarios that need them share the work dir. `key`: "rsa" (2048) or "ec"
    (P-256; packaging/link-order/update profiles both handshakes)."""
    if (work / "tls.pem").exists():
        return
    newkey = ["-newkey", "rsa:2048"] if key == "rsa" else ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]

    def openssl(*argv):
        subprocess.run(["openssl", *argv], cwd=work, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    openssl("req", "-x509", *newkey, "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
            "-days", "2", "-subj", "/CN=argocd-proxy bench CA")
    openssl("req", *newkey, "-nodes", "-keyout", "tls.key", "-out", "tls.csr", "-subj", "/CN=localhost")
    (work / "leaf.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "tls.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "tls.pem", "-days", "2", "-extfile", "leaf.ext")


def make_data(work, size):
    data = work / "data"
    data.mkdir()
    big = data / "big.bin"
    log(f"generating {size / MiB:.0f} MiB of random data")
    with open("/dev/urandom", "rb") as src, open(big, "wb") as dst:
        digest = hashlib.sha256()
        remaining = size
        while remaining:
            chunk = src.read(min(remaining, 8 * MiB))
            digest.update(chunk)
            dst.write(chunk)
            remaining -= len(chunk)
    return data, digest.hexdigest()
