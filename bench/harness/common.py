"""Constants and the two things every module of the harness uses: log() and Broken."""

import os
import sys
import time
from pathlib import Path

# This file is bench/harness/common.py: three levels below the repository.
REPO = Path(__file__).resolve().parent.parent.parent
BENCH = REPO / "bench"
SA_TOKEN = "bench-sa-token"
# ~100 bytes, like a small Kubernetes API answer.
SMALL = '{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Success","code":200,"reason":"bench"}'
SMALL = SMALL + " " * (100 - len(SMALL))
# `h2`: the TLS upstream on its port that offers HTTP/2 by ALPN, as the Kubernetes API does.
CLUSTERS = ("plain", "tls", "h2")
TLS_CLUSTERS = ("tls", "h2")
# S5/S10: an agent behind the delay proxy, for the plain upstream.
WAN = "wan"
# S11: the [[extension]] / [[backend]] name (the headers Argo CD sends: Setup.extension_headers).
EXTENSION = "bench"
SCENARIOS = ("F", "S1", "S2", "S3", "S4", "S5", "S6", "S7", "S8", "S9", "S10", "S11")
# Scenarios that start their own server (and agent) and need nothing of the main setup; F (the
# floors: examples/floors/) starts no server at all.
OWN_SETUP = {"F", "S7", "S9"}
# S9: the one cluster whose tunnel carries the streams.
WATCH = "watch"
CLK_TCK = os.sysconf("SC_CLK_TCK")
GiB = 1 << 30
MiB = 1 << 20


def log(message):
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Broken(Exception):
    """Something in the setup under test broke (not a performance number)."""
