#!/usr/bin/env python3
"""SSE upstream for benches/streams.sh (Python 3 standard library only).

Every request on every port gets `200`, `content-type: text/event-stream`, a chunked body of
events `data: {"seq":K,"t":UNIX_TIME,"pad":"xx.."}\\n\\n` (about --event-bytes bytes each),
one every INTERVAL seconds from t=0 while t < DURATION (at least one), and the end of the
body at t=DURATION. Connections are kept alive (HTTP/1.1), so a proxy can pool them.

Query parameters override the defaults per request: `?interval=0.5&duration=0` (duration=0:
one event, then the end at once, for time-to-first-byte probes).

"t" is the wall-clock time the event was written, so a client on the same machine can tell
how late each event reached it.

Usage: sse_upstream.py --port P [--port P2 ...] [--interval 2] [--duration 30]
SIGUSR1 prints the counters to stderr; SIGTERM prints them and exits. SIGUSR2 prints the
streams open now, the most open at once since the previous SIGUSR2, and the events written.
"""
import argparse
import asyncio
import resource
import signal
import sys
import time
from urllib.parse import parse_qs, urlsplit


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((65536, max(65536, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Stats:
    def __init__(self):
        self.conns = 0
        self.open_conns = 0
        self.max_open_conns = 0
        self.streams = 0
        self.open_streams = 0
        self.max_open_streams = 0
        self.window_max_open = 0  # max open streams since the last SIGUSR2
        self.completed = 0
        self.aborted = 0
        self.events = 0

    def line(self):
        return ("sse_upstream: connections %d (max open %d), streams %d (max open %d), "
                "completed %d, aborted by the peer %d, events %d" % (
                    self.conns, self.max_open_conns, self.streams, self.max_open_streams,
                    self.completed, self.aborted, self.events))

    def window_line(self):
        # SIGUSR2: open streams now, the most open at once since the previous SIGUSR2 (then
        # reset), and the events written so far (benches/streams.sh, CLIENT_PROTO=h2).
        line = "sse_upstream: now open %d, max open since last %d, events %d" % (
            self.open_streams, self.window_max_open, self.events)
        self.window_max_open = self.open_streams
        return line


STATS = Stats()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, action="append", required=True)
    ap.add_argument("--interval", type=float, default=2.0)
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--event-bytes", type=int, default=100)
    ap.add_argument("--backlog", type=int, default=4096)
    args = ap.parse_args()
    nofile = raise_nofile()
    # `data: {"seq":12,"t":1765081234.123456,"pad":"` + pad + `"}` + "\n\n"
    pad = "x" * max(0, args.event_bytes - 48)

    async def handle(reader, writer):
        loop = asyncio.get_running_loop()
        STATS.conns += 1
        STATS.open_conns += 1
        STATS.max_open_conns = max(STATS.max_open_conns, STATS.open_conns)
        in_stream = False
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return  # the peer closed an idle connection: normal
                except asyncio.LimitOverrunError:
                    writer.write(b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                line, _, rest = head.partition(b"\r\n")
                parts = line.split(b" ")
                if len(parts) != 3:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return
                lower = rest.lower()
                close = b"\r\nconnection: close" in b"\r\n" + lower
                if b"content-length:" in lower or b"transfer-encoding:" in lower:
                    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    return  # GET only: no request bodies
                q = parse_qs(urlsplit(parts[1].decode("latin-1")).query)
                interval = float(q["interval"][0]) if "interval" in q else args.interval
                duration = float(q["duration"][0]) if "duration" in q else args.duration
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                             b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n"
                             + (b"connection: close\r\n" if close else b"") + b"\r\n")
                STATS.streams += 1
                STATS.open_streams += 1
                STATS.max_open_streams = max(STATS.max_open_streams, STATS.open_streams)
                STATS.window_max_open = max(STATS.window_max_open, STATS.open_streams)
                in_stream = True
                start = loop.time()
                seq = 0
                while True:
                    payload = ('data: {"seq":%d,"t":%.6f,"pad":"%s"}\n\n' % (seq, time.time(), pad)).encode()
                    writer.write(b"%x\r\n%s\r\n" % (len(payload), payload))
                    await writer.drain()
                    STATS.events += 1
                    seq += 1
                    if seq * interval >= duration:
                        break
                    await asyncio.sleep(max(0.0, start + seq * interval - loop.time()))
                await asyncio.sleep(max(0.0, start + duration - loop.time()))
                writer.write(b"0\r\n\r\n")
                await writer.drain()
                STATS.open_streams -= 1
                STATS.completed += 1
                in_stream = False
                if close:
                    return
        except (ConnectionError, OSError):
            pass
        finally:
            if in_stream:
                STATS.open_streams -= 1
                STATS.aborted += 1
            STATS.open_conns -= 1
            writer.close()

    async def serve():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(STATS.line(), file=sys.stderr, flush=True))
        loop.add_signal_handler(signal.SIGUSR2, lambda: print(STATS.window_line(), file=sys.stderr, flush=True))
        servers = []
        for port in args.port:
            servers.append(await asyncio.start_server(handle, args.host, port, backlog=args.backlog,
                                                      reuse_address=True))
        print("sse_upstream: listening on %s ports %s, RLIMIT_NOFILE %d, event every %gs for %gs"
              % (args.host, ",".join(map(str, args.port)), nofile, args.interval, args.duration),
              file=sys.stderr, flush=True)
        await stop.wait()
        print(STATS.line(), file=sys.stderr, flush=True)
        for s in servers:
            s.close()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
