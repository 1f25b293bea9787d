#!/usr/bin/env python3
"""Load client for benches/streams.sh: many concurrent HTTP/1.1 SSE streams (stdlib only).

Mode `streams` (the memory run): opens --streams connections, started evenly over --ramp
seconds, each `GET PATH` with `Authorization: Bearer KEY`; reads every event to the end of the
body; records per stream the time to first byte (request written to the first response byte, on a new
connection),
per event the delivery delay (now - the upstream's "t"), and counts events and body bytes.
When every stream has its response headers (or has failed), it writes --open-file (JSON) and
prints `ALL_OPEN ...` to stderr, so the caller can sample the proxy's memory. SIGUSR1 writes
--progress-file: `EVENTS BYTES OPEN_STREAMS`.

Mode `probe` (time to first byte): opens --background long streams (held open, events
flowing), then runs --warmup + --probes sequential short streams, each on a new connection
(--reuse: all on one kept-alive connection), and reports the probes' time to first byte. The background streams are then closed by the
client (not a failure).

Every failure (connect error, non-200, wrong content type, reset or truncated body, fewer
events than --expect-events, timeout) is counted by reason and printed; exit status 1 when
there was any: such a run is not a valid measurement. The result is JSON in --result.

Source addresses: --sources 127.0.0.2,127.0.0.3 spreads the connections over several local
addresses (IP_BIND_ADDRESS_NO_PORT), so N streams never run out of ephemeral ports.

HTTP/1.1 only: the standard library has no HTTP/2; benches/streams.sh CLIENT_PROTO=h2 uses h2load
(nghttp2-client) as the client instead.
"""
import argparse
import asyncio
import collections
import json
import os
import resource
import signal
import socket
import sys
import time

IP_BIND_ADDRESS_NO_PORT = 24


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for want in ((max(65536, soft), max(65536, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, want)
            break
        except (ValueError, OSError):
            continue
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        sys.exit("sse_clients: need %d open files, RLIMIT_NOFILE is %d and cannot be raised" % (need, soft))


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, int(round(q * (len(v) - 1))))]


def summary_ms(values):
    return {"n": len(values), "p50": pct(values, 0.5), "p99": pct(values, 0.99),
            "max": max(values) if values else None} if values else {"n": 0}


class Failed(Exception):
    pass


class State:
    def __init__(self):
        self.opened = 0
        self.failed_before_open = 0
        self.open_now = 0
        self.completed = 0
        self.events = 0
        self.bytes = 0
        self.ttfb = []        # ms
        self.latency = []     # ms, event delivery delay
        self.fail = collections.Counter()
        self.examples = {}

    def failure(self, reason, detail):
        self.fail[reason] += 1
        if reason not in self.examples:
            self.examples[reason] = detail
            print("sse_clients: FAILURE %s: %s" % (reason, detail), file=sys.stderr, flush=True)


async def connect(args, source):
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        if source:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source, 0))
        await loop.sock_connect(sock, (args.host, args.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=1 << 20)


def request_bytes(args, path):
    auth = "Authorization: Bearer %s\r\n" % args.key if args.key else ""
    return ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n%sAccept: text/event-stream\r\n"
            "User-Agent: authgate-streams-bench\r\n\r\n" % (path, args.host, args.port, auth)).encode()


async def run_stream(args, st, req, source, expect_events, on_open, record_events=True, conn=None):
    """One stream to its end. Returns the time to first byte in ms (request written to the
    first response byte); raises Failed. With conn=(reader, writer), the request goes on that
    kept-alive connection, which is left open."""
    opened = False
    writer = None
    try:
        if conn is None:
            try:
                reader, writer = await connect(args, source)
            except OSError as e:
                raise Failed("connect", repr(e))
        else:
            reader, _ = conn
        t0 = time.perf_counter()
        (conn[1] if conn else writer).write(req)
        buf = bytearray()
        first = await reader.read(65536)
        if not first:
            raise Failed("closed-before-response", "EOF before any response byte")
        ttfb = (time.perf_counter() - t0) * 1000.0
        buf += first
        while True:
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(buf) > 65536:
                raise Failed("bad-response", "response head over 64 KiB")
            more = await reader.read(65536)
            if not more:
                raise Failed("closed-in-headers", "EOF inside the response head")
            buf += more
        head = bytes(buf[:end]).decode("latin-1")
        body = buf[end + 4:]
        lines = head.split("\r\n")
        status = lines[0].split(" ", 2)
        code = int(status[1]) if len(status) > 1 and status[1].isdigit() else 0
        headers = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            headers[k.strip().lower()] = v.strip()
        if code != 200:
            raise Failed("http-%d" % code, "%s | %r" % (lines[0], bytes(body[:200])))
        if not headers.get("content-type", "").startswith("text/event-stream"):
            raise Failed("content-type", repr(headers.get("content-type")))
        opened = True
        on_open(True)

        events = 0
        nbytes = 0
        carry = bytearray()
        now = time.time
        lat = st.latency if record_events else None

        def on_data(data):
            nonlocal events, nbytes
            nbytes += len(data)
            carry.extend(data)
            while True:
                k = carry.find(b"\n\n")
                if k < 0:
                    return
                if lat is not None:
                    p = carry.find(b'"t":', 0, k)
                    if p >= 0:
                        q = carry.find(b",", p, k)
                        try:
                            lat.append((now() - float(carry[p + 4:q])) * 1000.0)
                        except ValueError:
                            pass
                events += 1
                if record_events:
                    st.events += 1
                del carry[:k + 2]

        te = headers.get("transfer-encoding", "").lower()
        try:
            if "chunked" in te:
                pending = body
                SIZE, DATA, CRLF, TRAILER = 0, 1, 2, 3
                state, remaining, done = SIZE, 0, False
                while not done:
                    progress = True
                    while progress and not done:
                        progress = False
                        if state == SIZE:
                            j = pending.find(b"\r\n")
                            if j >= 0:
                                size = int(bytes(pending[:j]).split(b";")[0].strip() or b"x", 16)
                                del pending[:j + 2]
                                state, remaining = (TRAILER, 0) if size == 0 else (DATA, size)
                                progress = True
                        elif state == DATA:
                            if pending:
                                take = min(remaining, len(pending))
                                on_data(bytes(pending[:take]))
                                del pending[:take]
                                remaining -= take
                                if remaining == 0:
                                    state = CRLF
                                progress = True
                        elif state == CRLF:
                            if len(pending) >= 2:
                                if pending[:2] != b"\r\n":
                                    raise Failed("bad-chunking", repr(bytes(pending[:20])))
                                del pending[:2]
                                state = SIZE
                                progress = True
                        else:  # TRAILER: lines until an empty one
                            j = pending.find(b"\r\n")
                            if j >= 0:
                                done = j == 0
                                del pending[:j + 2]
                                progress = True
                    if done:
                        break
                    more = await reader.read(65536)
                    if not more:
                        raise Failed("truncated", "EOF inside the chunked body after %d events" % events)
                    pending += more
            elif "content-length" in headers:
                left = int(headers["content-length"]) - len(body)
                on_data(bytes(body))
                while left > 0:
                    more = await reader.read(min(65536, left))
                    if not more:
                        raise Failed("truncated", "EOF before content-length after %d events" % events)
                    left -= len(more)
                    on_data(more)
            else:  # delimited by the end of the connection
                on_data(bytes(body))
                while True:
                    more = await reader.read(65536)
                    if not more:
                        break
                    on_data(more)
        finally:
            if record_events:
                st.bytes += nbytes
        if expect_events and events != expect_events:
            raise Failed("event-count", "got %d events, expected %d" % (events, expect_events))
        return ttfb
    except (ConnectionError, OSError) as e:
        raise Failed("reset" if opened else "reset-before-open", repr(e))
    except ValueError as e:
        raise Failed("bad-response", repr(e))
    finally:
        if not opened:
            on_open(False)
        if writer is not None:
            writer.close()


async def main_streams(args):
    st = State()
    loop = asyncio.get_running_loop()
    req = request_bytes(args, args.path)
    sources = args.sources.split(",") if args.sources else [None]
    n = args.streams
    all_open = loop.create_future()
    t_start = time.time()

    def on_open(ok):
        if ok:
            st.opened += 1
            st.open_now += 1
        else:
            st.failed_before_open += 1
        if st.opened + st.failed_before_open == n and not all_open.done():
            all_open.set_result(time.time())

    def progress():
        tmp = args.progress_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d %d %d\n" % (st.events, st.bytes, st.open_now))
        os.replace(tmp, args.progress_file)

    if args.progress_file:
        loop.add_signal_handler(signal.SIGUSR1, progress)

    async def one(i):
        was_open = False

        def opened(ok):
            nonlocal was_open
            was_open = ok
            on_open(ok)

        try:
            ttfb = await run_stream(args, st, req, sources[i % len(sources)], args.expect_events, opened)
            st.ttfb.append(ttfb)
            st.completed += 1
        except Failed as e:
            st.failure(e.args[0], e.args[1])
        except asyncio.CancelledError:
            st.failure("timeout", "stream still running at the deadline")
            raise
        finally:
            if was_open:
                st.open_now -= 1

    tasks = []

    async def launcher():
        base = loop.time()
        step = args.ramp / n if n else 0
        for i in range(n):
            delay = base + i * step - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))

    await launcher()

    async def announce():
        t = await all_open
        info = {"time": t, "since_start_s": t - t_start, "opened": st.opened, "failed": st.failed_before_open}
        if args.open_file:
            with open(args.open_file + ".tmp", "w") as f:
                json.dump(info, f)
            os.replace(args.open_file + ".tmp", args.open_file)
        print("sse_clients: ALL_OPEN opened=%d failed=%d after %.2f s" % (st.opened, st.failed_before_open, t - t_start),
              file=sys.stderr, flush=True)

    ann = asyncio.create_task(announce())
    deadline = args.ramp + args.timeout
    done, pending = await asyncio.wait(tasks, timeout=max(1.0, t_start + deadline - time.time()))
    for t in pending:
        t.cancel()
    if pending:
        await asyncio.wait(pending)
    if not all_open.done():
        all_open.set_result(time.time())
    await ann
    wall = time.time() - t_start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ru.ru_utime + ru.ru_stime
    return st, {"streams": n, "opened": st.opened, "completed": st.completed,
                "failed": sum(st.fail.values()), "fail_reasons": dict(st.fail), "fail_examples": st.examples,
                "events": st.events, "bytes": st.bytes, "ttfb_ms": summary_ms(st.ttfb),
                "event_delay_ms": summary_ms(st.latency), "wall_s": wall, "client_cpu_s": cpu,
                "client_cpu_share": cpu / wall if wall > 0 else 0}


async def main_probe(args):
    st = State()
    loop = asyncio.get_running_loop()
    sources = args.sources.split(",") if args.sources else [None]
    bg_req = request_bytes(args, args.bg_path)
    probe_req = request_bytes(args, args.path)
    nbg = args.background
    bg_open = loop.create_future()
    if nbg == 0:
        bg_open.set_result(None)

    def on_bg_open(ok):
        if ok:
            st.opened += 1
        else:
            st.failed_before_open += 1
        if st.opened + st.failed_before_open == nbg and not bg_open.done():
            bg_open.set_result(None)

    async def bg(i):
        try:
            await run_stream(args, st, bg_req, sources[i % len(sources)], 0, on_bg_open, record_events=False)
            st.failure("background-ended", "a background stream ended before the probes were done")
        except Failed as e:
            st.failure("background-" + e.args[0], e.args[1])

    tasks = []
    step = args.ramp / nbg if nbg else 0
    base = loop.time()
    for i in range(nbg):
        delay = base + i * step - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(bg(i)))
    try:
        await asyncio.wait_for(bg_open, args.timeout)
    except asyncio.TimeoutError:
        st.failure("background-timeout", "background streams not all open after %g s" % args.timeout)
    await asyncio.sleep(args.settle)
    probes = []
    conn = None
    if args.reuse:
        try:
            conn = await connect(args, sources[0])
        except OSError as e:
            st.failure("probe-connect", repr(e))
            args.probes = args.warmup = 0
    for k in range(args.warmup + args.probes):
        try:
            ttfb = await asyncio.wait_for(
                run_stream(args, st, probe_req, sources[k % len(sources)], args.expect_events, lambda ok: None,
                           record_events=False, conn=conn), args.timeout)
            if k >= args.warmup:
                probes.append(ttfb)
        except Failed as e:
            st.failure("probe-" + e.args[0], e.args[1])
        except asyncio.TimeoutError:
            st.failure("probe-timeout", "probe took over %g s" % args.timeout)
    if conn is not None:
        conn[1].close()
    for t in tasks:
        t.cancel()
    if tasks:
        await asyncio.wait(tasks)
    return st, {"background": nbg, "background_opened": st.opened, "probes": len(probes),
                "failed": sum(st.fail.values()), "fail_reasons": dict(st.fail), "fail_examples": st.examples,
                "ttfb_ms": summary_ms(probes)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["streams", "probe"], default="streams")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/sse/stream")
    ap.add_argument("--bg-path", default="/sse/stream?duration=3600")
    ap.add_argument("--key", default="")
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--ramp", type=float, default=4.0, help="seconds over which the streams are started")
    ap.add_argument("--expect-events", type=int, default=0, help="events each stream must carry (0: any)")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds after the ramp before giving up")
    ap.add_argument("--sources", default="", help="comma-separated local addresses to connect from")
    ap.add_argument("--open-file", default="")
    ap.add_argument("--progress-file", default="")
    ap.add_argument("--result", default="")
    ap.add_argument("--background", type=int, default=0)
    ap.add_argument("--probes", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--reuse", action="store_true",
                    help="probe mode: send the probes one after the other on one kept-alive connection")
    ap.add_argument("--settle", type=float, default=1.0, help="probe mode: seconds between background open and probes")
    args = ap.parse_args()
    raise_nofile(max(args.streams, args.background) + 64)
    st, result = asyncio.run(main_streams(args) if args.mode == "streams" else main_probe(args))
    if args.result:
        with open(args.result, "w") as f:
            json.dump(result, f, indent=1)
    if result["failed"]:
        print("sse_clients: %d FAILED (%s): NOT A VALID MEASUREMENT" % (
            result["failed"], ", ".join("%s=%d" % kv for kv in sorted(result["fail_reasons"].items()))),
            file=sys.stderr, flush=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
