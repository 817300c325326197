#!/usr/bin/env python3
"""Long-lived watch-like streams for bench/run's S9 (many concurrent streams on one tunnel):
an upstream that holds thousands of streaming responses open (nginx cannot), and a client that
opens thousands of them through the server and checks they stay alive.

    python3 bench/watches.py serve [--interval 10] [--lifetime 900]
    python3 bench/watches.py clients --target HOST:PORT --path /tunnel/watch/watch?watch=true \
        --count N [--concurrency 200] [--hold 60] [--interval 10] [--lifetime 900]

`serve` listens on a port of 127.0.0.1 chosen by the OS, prints `listen 127.0.0.1:PORT`, then
`ready`. HTTP/1.1: `GET /watch…` answers 200 with a chunked body that sends a short chunk (one
JSON line, like a Kubernetes watch event) at once and then one small chunk every --interval
seconds (the first after a random part of it, so thousands of streams do not tick together)
and never ends: the streams are idle but alive. `GET /stats` answers
`{"open": N, "opened": N, "closed": N}` (watch streams open now, ever opened, closed) and
closes. Anything else is 404.

`clients` opens --count connections to --target, at most --concurrency connecting at once,
each sending `GET --path` and reading its chunked answer. A stream is up when its first chunk
arrived. When every stream is up or failed it prints

    up N failed F [first_error: TEXT]

then, --hold seconds later,

    live L of N closed C stale S chunks_min A chunks_median B [first_close: TEXT]

where live = still open and a chunk arrived within the last 2 × --interval (a live stream gets
one every --interval), closed = ended or failed after it was up, stale = open but silent. It
then holds the streams until SIGTERM/SIGINT or --lifetime and exits (both modes always stop by
themselves). Both raise their soft RLIMIT_NOFILE to the hard limit and use one asyncio Protocol
per connection. Python 3 standard library only.
"""

import argparse
import asyncio
import json
import random
import resource
import signal
import statistics
import sys
import time

MAX_HEAD = 16 * 1024
FIRST = b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"bench","resourceVersion":"1"}}}\n'
TICK = b'{"type":"BOOKMARK","object":{"kind":"Pod","apiVersion":"v1","metadata":{"resourceVersion":"2"}}}\n'


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---------------------------------------------------------------------------------------------
# serve


class Counts:
    def __init__(self):
        self.open = 0
        self.opened = 0
        self.closed = 0


class Upstream(asyncio.Protocol):
    def __init__(self, counts, interval):
        self.counts = counts
        self.interval = interval
        self.buffer = bytearray()
        self.transport = None
        self.timer = None
        self.watching = False

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        if self.watching:
            return  # a watch has no request body; ignore anything else
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buffer) > MAX_HEAD:
                self.transport.abort()
            return
        request_line = self.buffer[:self.buffer.find(b"\r\n")].decode("latin-1")
        del self.buffer[:end + 4]
        parts = request_line.split(" ")
        path = parts[1] if len(parts) == 3 else ""
        if parts[0] == "GET" and path.startswith("/watch"):
            self.watching = True
            self.counts.open += 1
            self.counts.opened += 1
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                 b"Transfer-Encoding: chunked\r\n\r\n" + chunk(FIRST))
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(random.uniform(0, self.interval), self.tick)
        elif parts[0] == "GET" and path.startswith("/stats"):
            body = json.dumps({"open": self.counts.open, "opened": self.counts.opened,
                               "closed": self.counts.closed}).encode()
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            self.transport.close()
        else:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            self.transport.close()

    def tick(self):
        if self.transport.is_closing():
            return
        self.transport.write(chunk(TICK))
        self.timer = asyncio.get_running_loop().call_later(self.interval, self.tick)

    def connection_lost(self, exc):
        if self.timer:
            self.timer.cancel()
        if self.watching:
            self.watching = False
            self.counts.open -= 1
            self.counts.closed += 1


async def serve(args):
    raise_nofile()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.call_later(args.lifetime, stop.set)
    counts = Counts()
    server = await loop.create_server(lambda: Upstream(counts, args.interval), "127.0.0.1", 0, backlog=4096)
    print(f"listen 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    print("ready", flush=True)
    await stop.wait()
    server.close()
    print(f"done open {counts.open} opened {counts.opened} closed {counts.closed}", flush=True)


# ---------------------------------------------------------------------------------------------
# clients


class Watch(asyncio.Protocol):
    def __init__(self, request, stats):
        self.request = request
        self.stats = stats
        self.buffer = bytearray()
        self.state = "head"  # head -> size -> data -> (size ...) -> ended
        self.need = 0  # bytes left in the current chunk (+2 for its CRLF)
        self.chunks = 0
        self.last = None  # monotonic time of the last chunk
        self.up = asyncio.get_running_loop().create_future()
        self.transport = None
        self.ended = None  # why it ended (after it was up)
        self.closing = False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.request)

    def fail(self, why):
        if not self.up.done():
            self.up.set_exception(ConnectionError(why))
        elif self.ended is None:
            self.ended = why
            self.stats["first_close"] = self.stats["first_close"] or why
        self.transport.abort()

    def data_received(self, data):
        self.buffer += data
        buf = self.buffer
        while True:
            if self.state == "head":
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD:
                        return self.fail("response head too large")
                    return
                head = buf[:end].decode("latin-1").split("\r\n")
                del buf[:end + 4]
                status = head[0].split(" ", 2)
                if len(status) < 2 or status[1] != "200":
                    body = bytes(buf[:200]).decode("utf-8", "replace").strip()
                    return self.fail(f"HTTP status {head[0]!r}" + (f", body {body!r}" if body else ""))
                if not any(line.lower().replace(" ", "") == "transfer-encoding:chunked" for line in head[1:]):
                    return self.fail("response is not chunked")
                self.state = "size"
            elif self.state == "size":
                end = buf.find(b"\r\n")
                if end < 0:
                    return
                try:
                    size = int(bytes(buf[:end]).split(b";")[0], 16)
                except ValueError:
                    return self.fail(f"bad chunk size {bytes(buf[:end])[:40]!r}")
                del buf[:end + 2]
                if size == 0:
                    return self.fail("the stream ended (last chunk)")
                self.need = size + 2
                self.state = "data"
            elif self.state == "data":
                if not buf:
                    return
                take = min(self.need, len(buf))
                del buf[:take]
                self.need -= take
                if self.need:
                    return
                self.chunks += 1
                self.last = time.monotonic()
                if not self.up.done():
                    self.up.set_result(None)
                self.state = "size"

    def connection_lost(self, exc):
        if not self.closing:
            self.fail(f"connection lost: {exc or 'EOF'}")

    def close(self):
        self.closing = True
        if self.transport:
            self.transport.close()


async def clients(args):
    hard = raise_nofile()
    if hard < args.count + 64:
        print(f"RLIMIT_NOFILE hard limit {hard} < {args.count} streams", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.call_later(args.lifetime, stop.set)
    host, port = args.target.rsplit(":", 1)
    request = (f"GET {args.path} HTTP/1.1\r\nHost: {args.target}\r\nAccept: application/json\r\n\r\n").encode()
    stats = {"first_close": None}
    watches = []
    errors = []
    slots = asyncio.Semaphore(args.concurrency)

    async def one():
        async with slots:
            if stop.is_set():
                errors.append("stopped")
                return
            watch = None
            try:
                async with asyncio.timeout(args.connect_timeout):
                    _, watch = await loop.create_connection(lambda: Watch(request, stats), host, int(port))
                    await watch.up
                watches.append(watch)
            except (OSError, ConnectionError, TimeoutError) as error:
                if isinstance(error, TimeoutError):
                    error = TimeoutError(f"no first chunk within {args.connect_timeout:g} s")
                errors.append(f"{type(error).__name__}: {error}")
                if watch is not None:
                    watch.up.cancel()
                    watch.close()

    await asyncio.gather(*(one() for _ in range(args.count)))
    line = f"up {len(watches)} failed {len(errors)}"
    if errors:
        line += f" first_error: {errors[0]}"
    print(line, flush=True)
    try:
        await asyncio.wait_for(stop.wait(), timeout=args.hold)
    except TimeoutError:
        pass
    if not stop.is_set():
        now = time.monotonic()
        closed = sum(1 for w in watches if w.ended is not None)
        live = sum(1 for w in watches if w.ended is None and now - w.last <= 2 * args.interval)
        chunks = [w.chunks for w in watches] or [0]
        line = (f"live {live} of {len(watches)} closed {closed} stale {len(watches) - live - closed} "
                f"chunks_min {min(chunks)} chunks_median {statistics.median(chunks):g}")
        if stats["first_close"]:
            line += f" first_close: {stats['first_close']}"
        print(line, flush=True)
        await stop.wait()
    for watch in watches:
        watch.close()
    await asyncio.sleep(0.2)  # let the closes go out before the loop ends
    print("done", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve", help="the upstream")
    s.add_argument("--interval", type=float, default=10.0, help="seconds between chunks of a watch")
    s.add_argument("--lifetime", type=float, default=900.0, help="exit by itself after this many seconds")
    c = sub.add_parser("clients", help="the watch clients")
    c.add_argument("--target", required=True, help="host:port (the server's internal listener)")
    c.add_argument("--path", required=True, help="request path, e.g. /tunnel/watch/watch?watch=true")
    c.add_argument("--count", type=int, required=True)
    c.add_argument("--concurrency", type=int, default=200, help="connects in flight at once")
    c.add_argument("--connect-timeout", type=float, default=30.0, help="seconds to the first chunk")
    c.add_argument("--hold", type=float, default=60.0, help="seconds after all are up before counting live ones")
    c.add_argument("--interval", type=float, default=10.0, help="the upstream's --interval")
    c.add_argument("--lifetime", type=float, default=900.0, help="exit by itself after this many seconds")
    args = parser.parse_args()
    asyncio.run(serve(args) if args.mode == "serve" else clients(args))


if __name__ == "__main__":
    main()
