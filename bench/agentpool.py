#!/usr/bin/env python3
"""A pool of light fake agents for bench/run's S7 (many idle agent sessions on one server).

    python3 bench/agentpool.py --server 127.0.0.1:PORT --tokens FILE [--first 0] --count N \
        [--concurrency 200] [--connect-timeout 30] [--lifetime 900] [--ping-interval 10] [--ca CA.pem]

FILE holds one `<cluster-id> <token>` per line. The pool opens --count WebSocket connections to
the server's public listener (`GET /connect`, one line of FILE each, from line --first), each as
an agent does (docs/protocol.md): `Authorization: Bearer <token>`, `Upgrade: websocket`,
`Sec-WebSocket-Key` / `-Version: 13`, `X-Argocd-Proxy-Protocol: 2`. On the 101 with the header
echoed (and a correct `Sec-WebSocket-Accept`) it sends a v2 Settings frame (version = 2) as its
first message, waits for the server's Settings, and then stays idle: it answers every tunnel
Ping (0x06) with a Pong (0x07, same payload) and every WebSocket ping with a WebSocket pong,
masked as a WebSocket client must. With --ping-interval S > 0 it also pings as our agent does: a
tunnel Ping (8-byte payload) as soon as the session is up, then every S seconds, and counts the
server's Pongs; nothing else is sent. (Both real agents ping: ours every 10 s, the Go one every
15 s; 0 makes a pool that only answers.)

At most --concurrency connects (TCP, TLS with --ca, upgrade, negotiation) are in flight at once. When every
connection has either negotiated or failed it prints one line:

    up N failed F [first_error: TEXT]

then holds the sessions until SIGTERM/SIGINT or --lifetime seconds (so it always stops by
itself). SIGUSR1 prints `status open N closed_by_server C pings P sent S pongs Q unexpected U`; at exit
it prints the same line starting with `done` (closed_by_server: sessions that were up and that
the server closed or cut; pings: the server's Pings received; sent / pongs: Pings sent and the
server's Pongs; unexpected: frames other than Ping, Pong, LiveIds, Drain).

With --ca it speaks TLS first (wss://, ALPN http/1.1, the leaf's names checked against --server's
host: an IP, so no SNI, as with the real agent), as a production agent does (bench/run --tunnel-tls).

One asyncio Protocol per connection (no stream reader/writer pair), so each session costs the
pool little; its soft RLIMIT_NOFILE is raised to the hard limit. Python 3 standard library only.
"""

import argparse
import asyncio
import base64
import hashlib
import os
import resource
import signal
import ssl
import struct
import sys

WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOL_HEADER = "x-argocd-proxy-protocol"
PING, PONG, SETTINGS, DRAIN, LIVE_IDS = 0x06, 0x07, 0x10, 0x14, 0x15
# Settings entry: key 1 (version), length 1, value 2.
SETTINGS_V2 = bytes([SETTINGS]) + struct.pack(">I", 0) + bytes([1, 1, 2])
MAX_HEAD = 16 * 1024


def masked(opcode, payload):
    """One client WebSocket frame (FIN set), masked."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
    body = bytes(b ^ mask[i & 3] for i, b in enumerate(payload))
    return head + mask + body


class Stats:
    def __init__(self):
        self.open = 0
        self.closed_by_server = 0
        self.pings = 0
        self.sent = 0
        self.pongs = 0
        self.unexpected = 0

    def line(self, word):
        return (f"{word} open {self.open} closed_by_server {self.closed_by_server} pings {self.pings} "
                f"sent {self.sent} pongs {self.pongs} unexpected {self.unexpected}")


class Agent(asyncio.Protocol):
    def __init__(self, host, token, stats, ping_interval):
        self.host = host
        self.ping_interval = ping_interval
        self.sent_pings = 0
        self.token = token
        self.stats = stats
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.buffer = bytearray()
        self.state = "http"  # http -> settings -> idle -> closed
        self.ready = asyncio.get_running_loop().create_future()
        self.transport = None
        self.fragments = None  # (opcode, bytearray) of a fragmented message
        self.closing = False  # we close it

    def connection_made(self, transport):
        self.transport = transport
        transport.write((f"GET /connect HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {self.token}\r\n"
                         f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {self.key}\r\n"
                         f"Sec-WebSocket-Version: 13\r\nX-Argocd-Proxy-Protocol: 2\r\n\r\n").encode())

    def fail(self, why):
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(why))
        self.closing = True
        if self.transport:
            self.transport.abort()

    def data_received(self, data):
        self.buffer += data
        if self.state == "http":
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEAD:
                    self.fail("response head too large")
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            del self.buffer[:end + 4]
            status = head[0].split(" ", 2)
            if len(status) < 2 or status[1] != "101":
                return self.fail(f"HTTP status {head[0]!r}")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            accept = base64.b64encode(hashlib.sha1(self.key.encode() + WS_GUID).digest()).decode()
            if headers.get("sec-websocket-accept") != accept:
                return self.fail(f"wrong Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
            if headers.get(PROTOCOL_HEADER) != "2":
                return self.fail(f"the 101 did not echo {PROTOCOL_HEADER}: 2")
            self.transport.write(masked(0x2, SETTINGS_V2))
            self.state = "settings"
        self.read_frames()

    def read_frames(self):
        buf = self.buffer
        while self.state in ("settings", "idle"):
            if len(buf) < 2:
                return
            b0, b1 = buf[0], buf[1]
            if b1 & 0x80:
                return self.fail("the server masked a frame")
            n, pos = b1 & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    return
                n, pos = struct.unpack_from(">H", buf, 2)[0], 4
            elif n == 127:
                if len(buf) < 10:
                    return
                n, pos = struct.unpack_from(">Q", buf, 2)[0], 10
            if len(buf) < pos + n:
                return
            payload = bytes(buf[pos:pos + n])
            del buf[:pos + n]
            fin, opcode = b0 & 0x80, b0 & 0x0F
            if opcode == 0x9:  # WebSocket ping
                self.transport.write(masked(0xA, payload))
            elif opcode == 0x8:  # close
                self.transport.write(masked(0x8, payload[:2]))
                return self.server_closed("WebSocket close")
            elif opcode in (0x1, 0x2, 0x0):
                if opcode != 0x0:
                    self.fragments = (opcode, bytearray(payload))
                elif self.fragments is not None:
                    self.fragments[1].extend(payload)
                else:
                    return self.fail("continuation without a message")
                if fin:
                    kind, message = self.fragments
                    self.fragments = None
                    if kind == 0x2:
                        self.on_message(bytes(message))

    def on_message(self, message):
        if len(message) < 5:
            return self.fail(f"short tunnel frame {message!r}")
        kind = message[0]
        if self.state == "settings":
            if kind != SETTINGS:
                return self.fail(f"first message from the server is type {kind:#04x}, not Settings")
            self.state = "idle"
            self.stats.open += 1
            if not self.ready.done():
                self.ready.set_result(None)
            if self.ping_interval > 0:
                self.ping()
        elif kind == PING:
            self.stats.pings += 1
            self.transport.write(masked(0x2, bytes([PONG]) + message[1:]))
        elif kind == PONG and self.ping_interval > 0:
            self.stats.pongs += 1
        elif kind not in (LIVE_IDS, DRAIN):
            self.stats.unexpected += 1

    def ping(self):
        if self.state != "idle":
            return
        self.sent_pings += 1
        self.stats.sent += 1
        payload = struct.pack(">Q", self.sent_pings)
        self.transport.write(masked(0x2, bytes([PING]) + struct.pack(">I", 0) + payload))
        asyncio.get_running_loop().call_later(self.ping_interval, self.ping)

    def server_closed(self, why):
        if self.state == "idle" and not self.closing:
            self.stats.closed_by_server += 1
            self.stats.open -= 1
        self.state = "closed"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"server closed during the handshake: {why}"))
        self.transport.close()

    def connection_lost(self, exc):
        if self.state != "closed":
            if self.state == "idle" and not self.closing:
                self.stats.closed_by_server += 1
                self.stats.open -= 1
            elif self.state == "idle":
                self.stats.open -= 1
            self.state = "closed"
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(f"connection lost: {exc or 'EOF'}"))

    def close(self):
        if self.state == "idle":
            self.stats.open -= 1
        self.closing = True
        self.state = "closed"
        if self.transport:
            self.transport.write(masked(0x8, struct.pack(">H", 1000)))  # going away politely
            self.transport.close()


async def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", required=True, help="host:port of the server's public listener")
    parser.add_argument("--tokens", required=True, help="file of `<cluster-id> <token>` lines")
    parser.add_argument("--first", type=int, default=0, help="first line of --tokens to use (0-based)")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=200, help="connects in flight at once")
    parser.add_argument("--connect-timeout", type=float, default=30.0, help="seconds per connect (TLS included) and negotiation")
    parser.add_argument("--lifetime", type=float, default=900.0, help="exit by itself after this many seconds")
    parser.add_argument("--ping-interval", type=float, default=0.0,
                        help="seconds between the tunnel Pings each session sends (0: never)")
    parser.add_argument("--ca", help="speak TLS (wss://) to --server, trusting this PEM CA")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.count + 64:
        print(f"RLIMIT_NOFILE hard limit {hard} < {args.count} sessions", file=sys.stderr, flush=True)

    with open(args.tokens) as f:
        lines = f.read().split("\n")[args.first:args.first + args.count]
    entries = [line.split() for line in lines if line.strip()]
    if len(entries) < args.count:
        parser.error(f"{args.tokens} has only {len(entries)} lines from {args.first}")

    host, port = args.server.rsplit(":", 1)
    tls_context = None
    if args.ca:
        tls_context = ssl.create_default_context(cafile=args.ca)
        tls_context.set_alpn_protocols(["http/1.1"])  # as the real agent offers
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    stats = Stats()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, lambda: print(stats.line("status"), flush=True))
    loop.call_later(args.lifetime, stop.set)

    agents = []
    errors = []
    slots = asyncio.Semaphore(args.concurrency)

    async def one(cluster, token):
        async with slots:
            if stop.is_set():
                errors.append("stopped")
                return
            agent = None
            try:
                async with asyncio.timeout(args.connect_timeout):
                    _, agent = await loop.create_connection(
                        lambda: Agent(args.server, token, stats, args.ping_interval), host, int(port),
                        ssl=tls_context)
                    agents.append(agent)
                    await agent.ready
            except (OSError, ConnectionError, TimeoutError) as error:
                if isinstance(error, TimeoutError):
                    error = TimeoutError(f"not negotiated within {args.connect_timeout:g} s")
                errors.append(f"{cluster}: {type(error).__name__}: {error}")
                if agent is not None:
                    agent.ready.cancel()  # nobody waits for it any more
                    agent.fail("given up")

    tasks = [asyncio.ensure_future(one(cluster, token)) for cluster, token in entries]
    await asyncio.gather(*tasks)
    line = f"up {stats.open} failed {len(errors)}"
    if errors:
        line += f" first_error: {errors[0]}"
    print(line, flush=True)
    await stop.wait()
    closed = stats.line("done")
    for agent in agents:
        agent.close()
    await asyncio.sleep(0.2)  # let the close frames go out before the loop ends
    print(closed, flush=True)


if __name__ == "__main__":
    asyncio.run(main())
