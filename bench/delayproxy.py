#!/usr/bin/env python3
"""A userspace TCP delay proxy for bench/run's WAN scenarios (S5, S10): the kernel here has no
`tc netem`, so WAN delay is emulated in userspace.

    python3 bench/delayproxy.py --delay-ms 25 --lifetime 1800 --target 127.0.0.1:8080 [--target …]

For every --target it listens on a port of 127.0.0.1 chosen by the OS and prints
`listen 127.0.0.1:PORT target HOST:PORT`, then `ready`. Each accepted connection is joined to a
new connection to its target; every chunk read from either side is written to the other side
`delay` later (so a request and its answer pay 2 × delay: one emulated round trip). A new
connection also pays one round trip before its first byte moves, as a TCP handshake over the
WAN would. Bandwidth is not limited (the delay line holds up to --buffer bytes per direction,
then the reader waits).

Both hops are loopback TCP connections that the proxy terminates, so the kernel's own TCP
windows never see the delay: only application-level windows (the tunnel's stream windows) do.

Threads (one reader and one writer per direction) and blocking sockets: the reads and writes
release the GIL, and large reads (1 MiB) keep the per-byte cost low. The process exits by
itself after --lifetime seconds, or on SIGTERM/SIGINT. Python 3 standard library only.
"""

import argparse
import collections
import os
import signal
import socket
import sys
import threading
import time

CHUNK = 1 << 20


class Direction:
    """src -> dst through a delay line."""

    def __init__(self, conn, src, dst, delay, cap):
        self.conn, self.src, self.dst, self.delay, self.cap = conn, src, dst, delay, cap
        self.queue = collections.deque()  # (due, bytes); b"" = EOF
        self.buffered = 0
        self.cv = threading.Condition()

    def reader(self):
        try:
            while not self.conn.aborted:
                with self.cv:
                    while self.buffered > self.cap and not self.conn.aborted:
                        self.cv.wait(0.5)
                data = self.src.recv(CHUNK)
                with self.cv:
                    self.queue.append((time.monotonic() + self.delay, data))
                    self.buffered += len(data)
                    self.cv.notify_all()
                if not data:
                    return
        except OSError:
            self.conn.abort()

    def writer(self):
        try:
            while True:
                with self.cv:
                    while not self.queue and not self.conn.aborted:
                        self.cv.wait(0.5)
                    if self.conn.aborted:
                        return
                    due = self.queue[0][0]
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                # Everything that is due now goes out in one write.
                now = time.monotonic()
                parts, eof = [], False
                with self.cv:
                    while self.queue and self.queue[0][0] <= now:
                        _, data = self.queue.popleft()
                        if not data:
                            eof = True
                            break
                        parts.append(data)
                        self.buffered -= len(data)
                    self.cv.notify_all()
                if parts:
                    self.dst.sendall(parts[0] if len(parts) == 1 else b"".join(parts))
                    self.conn.count(len(parts), sum(len(p) for p in parts))
                if eof:
                    try:
                        self.dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    self.conn.half_closed()
                    return
        except OSError:
            self.conn.abort()


class Connection:
    STATS = {"connections": 0, "bytes": 0, "writes": 0}
    LOCK = threading.Lock()

    def __init__(self, client, upstream):
        self.client, self.upstream = client, upstream
        self.aborted = False
        self.done = 0
        self.lock = threading.Lock()

    def count(self, writes, nbytes):
        with Connection.LOCK:
            Connection.STATS["writes"] += writes
            Connection.STATS["bytes"] += nbytes

    def half_closed(self):
        with self.lock:
            self.done += 1
            finished = self.done == 2
        if finished:
            self.close()

    def abort(self):
        if self.aborted:
            return
        self.aborted = True
        for sock in (self.client, self.upstream):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.close()

    def close(self):
        for sock in (self.client, self.upstream):
            try:
                sock.close()
            except OSError:
                pass


def handle(client, target, delay, cap):
    # The emulated handshake: one round trip before anything moves.
    time.sleep(2 * delay)
    try:
        upstream = socket.create_connection(target, timeout=10)
        upstream.settimeout(None)
    except OSError as error:
        print(f"connect {target[0]}:{target[1]}: {error}", flush=True)
        client.close()
        return
    for sock in (client, upstream):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = Connection(client, upstream)
    with Connection.LOCK:
        Connection.STATS["connections"] += 1
    for src, dst in ((client, upstream), (upstream, client)):
        direction = Direction(conn, src, dst, delay, cap)
        threading.Thread(target=direction.reader, daemon=True).start()
        threading.Thread(target=direction.writer, daemon=True).start()


def serve(listener, target, delay, cap):
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return
        threading.Thread(target=handle, args=(client, target, delay, cap), daemon=True).start()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, required=True, help="added in each direction")
    parser.add_argument("--target", action="append", required=True, metavar="HOST:PORT")
    parser.add_argument("--lifetime", type=float, required=True, help="exit after this many seconds")
    parser.add_argument("--buffer", type=int, default=64 << 20, help="bytes per direction in the delay line")
    args = parser.parse_args()
    delay = args.delay_ms / 1000.0
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    for spec in args.target:
        host, port = spec.rsplit(":", 1)
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(1024)
        print(f"listen 127.0.0.1:{listener.getsockname()[1]} target {spec}", flush=True)
        threading.Thread(target=serve, args=(listener, (host, int(port)), delay, args.buffer), daemon=True).start()
    print("ready", flush=True)
    stop.wait(args.lifetime)
    print(f"exiting: {Connection.STATS}", flush=True)
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
