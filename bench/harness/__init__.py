"""The benchmark harness behind bench/run, by role (bench/run is the entry point and the order
the scenarios run in; docs/benchmarks.md says what each measures):

    common.py      constants, log(), Broken
    cli.py         the command line (flags and their full/smoke defaults)
    procs.py       every process the harness starts (stopped by PID), logs, ports, CPU pinning
    measure.py     CPU and RSS from /proc: Measure, RssSampler, settled_rss
    clients.py     the load clients (curl, wrk) and HTTP reads of /metrics and /stats
    prepare.py     tools (apt-get), the cargo build, certificates, the bulk file
    config.py      the binaries' environment, [limits] tables, servers of a scenario's own (S7, S9)
    mainsetup.py   the main setup: nginx, server, agents, delay proxy (all but F, S7 and S9)
    scenarios/     one module per scenario group, combined into scenarios.Run
    report.py      the results tables and file (bench/results/), machine and load notes

The helpers run as processes of their own stay next to bench/run: agentpool.py (S7),
watches.py (S9), delayproxy.py (S5, S10), nginx.conf.in (read by mainsetup.py).
"""
