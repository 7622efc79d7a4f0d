"""Link-emulation benchmark parts (driven by bench/links.sh, as root).

  replay  PORT TRACE        an upstream that replays a recorded real stream
                            at the rate set through POST /control
  proxy   LISTEN TARGET MS  a TCP relay that holds every read for MS ms in
                            each direction (propagation delay; the kernel
                            here has no netem)
  client  URL MODE          one streamed request; prints arrival times
  run     ...               the whole matrix; prints the table

Display lag of token i = the time the client decoded it minus the time the
upstream wrote it. Both clocks are this machine's wall clock.
"""

import asyncio
import glob
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import zlib

MODES = {
    # name: (request headers, flush rule)
    "identity/event": ({}, "event"),
    "gzip/event": ({"Accept-Encoding": "gzip"}, "event"),
    "gzip/4 tokens": ({"Accept-Encoding": "gzip"}, "4"),
    "adaptive+hint": ({"Accept-Encoding": "gzip"}, "adaptive"),
    "adaptive": ({"Accept-Encoding": "gzip"}, "adaptive"),
}


def content_of(event):
    try:
        v = json.loads(event)
    except ValueError:
        return ""
    return "".join(((c.get("delta") or {}).get("content") or "") for c in v.get("choices") or [])


# ---- replay upstream -------------------------------------------------------

def replay(port, trace_path):
    events = [e + "\n\n" for e in open(trace_path).read().split("\n\n") if e.strip()]
    state = {"rate": 50.0, "emit": []}

    async def handle(reader, writer):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        length = next((int(l.split(":")[1]) for l in lines if l.lower().startswith("content-length:")), 0)
        body = await reader.readexactly(length) if length else b""
        path = lines[0].split()[1]
        if path.startswith("/control"):
            if body:
                state["rate"] = float(json.loads(body)["rate"])
            out = json.dumps({"rate": state["rate"], "emit": state["emit"]}).encode()
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out)
        elif path.startswith("/v1/models"):
            out = b'{"object":"list","data":[{"id":"replay","object":"model"}]}'
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(out) + out)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            await writer.drain()
            emit = []
            state["emit"] = emit
            gap = 1.0 / state["rate"] if state["rate"] > 0 else 0.0
            start = time.time()
            n = 0
            for e in events:
                if gap and content_of(e[6:].strip()):
                    # Paced from the start, so a slow write does not shift
                    # the schedule.
                    delay = start + n * gap - time.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    n += 1
                writer.write(e.encode())
                await writer.drain()
                if content_of(e[6:].strip()):
                    emit.append(time.time())
        await writer.drain()
        writer.close()

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---- delay proxy -----------------------------------------------------------

def proxy(listen, target, delay_ms):
    host, port = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)
    delay = float(delay_ms) / 1000.0

    async def pipe(reader, writer):
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # Same delay for every read, so call_later keeps the order.
                loop.call_later(delay, writer.write, data)
        finally:
            loop.call_later(delay + 0.001, writer.close)

    async def handle(reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        ur, uw = await asyncio.open_connection(thost, int(tport))
        uw.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer), return_exceptions=True)

    async def main():
        server = await asyncio.start_server(handle, host, int(port))
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# ---- client ----------------------------------------------------------------

def client(url, mode, bandwidth_kbps, key):
    """One streamed request over a raw socket; prints JSON with the arrival
    time of each token (decoded) and the completion time."""
    headers, rule = MODES[mode]
    host_port = url.split("//")[1]
    host, port = host_port.split(":")
    body = json.dumps({
        "model": "smollm2",
        "messages": [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}],
        "max_tokens": 300, "temperature": 0, "stream": True,
    }).encode()
    h = {"Host": host_port, "Content-Type": "application/json", "Authorization": f"Bearer {key}",
         "Content-Length": str(len(body)), "Connection": "close", "X-Tokenedge-Flush": rule,
         "Cache-Control": "no-store", **headers}
    if mode == "adaptive+hint":
        h["X-Tokenedge-Bandwidth"] = str(bandwidth_kbps)
    req = f"POST /v1/chat/completions HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items()) + "\r\n"
    start = time.time()
    s = socket.create_connection((host, int(port)))
    s.sendall(req.encode() + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    head, rest = buf.split(b"\r\n\r\n", 1)
    head_l = head.decode().lower()
    chunked = "transfer-encoding: chunked" in head_l
    gz = "content-encoding: gzip" in head_l
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    raw, text, arrivals, reads = rest, "", [], 0
    pending = b""

    def consume(now):
        nonlocal raw, text, pending
        out = b""
        if chunked:
            while True:
                if b"\r\n" not in raw:
                    break
                size_line, after = raw.split(b"\r\n", 1)
                size = int(size_line.split(b";")[0], 16)
                if len(after) < size + 2:
                    break
                out += after[:size]
                raw = after[size + 2:]
        else:
            out, raw = raw, b""
        data = inflater.decompress(out) if gz else out
        text += data.decode("utf-8", "replace")
        while "\n\n" in text:
            event, text = text.split("\n\n", 1)
            for line in event.split("\n"):
                if line.startswith("data: ") and content_of(line[6:]):
                    arrivals.append(now)

    consume(time.time())
    while True:
        data = s.recv(65536)
        if not data:
            break
        reads += 1
        raw += data
        consume(time.time())
    done = time.time()
    s.close()
    print(json.dumps({"start": start, "arrivals": arrivals, "done": done, "reads": reads}))


# ---- the matrix -----------------------------------------------------------

LINKS = [("100 Mbit/s, 20 ms", 100_000, 20), ("10 Mbit/s, 40 ms", 10_000, 40),
         ("1 Mbit/s, 100 ms", 1_000, 100), ("256 kbit/s, 300 ms", 256, 300)]


def sh(cmd):
    subprocess.run(cmd, shell=True, check=True)


def shape(kbps):
    burst = max(4096, kbps * 1000 // 8 // 100)  # >= rate / HZ
    for dev, ns in (("te0", ""), ("te1", "ip netns exec tecli ")):
        sh(f"{ns}tc qdisc replace dev {dev} root tbf rate {kbps}kbit burst {burst} latency 10s")


def tx():
    base = "/sys/class/net/te0/statistics/"
    return int(open(base + "tx_bytes").read()), int(open(base + "tx_packets").read())


# Ethernet (14) + IPv4 (20) + TCP with timestamps (32) per packet.
PACKET_HEADERS = 66


def workerd_cpu_ns():
    total = 0
    for pid in subprocess.run(["pgrep", "-f", "workerd"], capture_output=True, text=True).stdout.split():
        for f in glob.glob(f"/proc/{pid}/task/*/schedstat"):
            try:
                total += int(open(f).read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total


def control(replay_port, rate=None):
    import urllib.request
    data = json.dumps({"rate": rate}).encode() if rate is not None else None
    with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{replay_port}/control", data=data)) as r:
        return json.loads(r.read())


def one(url, mode, kbps, key):
    (before_tx, before_pk), before_cpu = tx(), workerd_cpu_ns()
    out = subprocess.run(["ip", "netns", "exec", "tecli", sys.executable, __file__, "client", url, mode, str(kbps), key],
                         capture_output=True, text=True, check=True).stdout
    r = json.loads(out)
    after_tx, after_pk = tx()
    r["wire"] = after_tx - before_tx
    r["packets"] = after_pk - before_pk
    r["cpu_ns"] = workerd_cpu_ns() - before_cpu
    return r


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def summarize(runs, emit_lists, one_way_ms):
    """Medians over the runs. Lag is reported as added lag: arrival minus
    emission minus the one-way propagation delay of the link."""
    rows = []
    for r, emit in zip(runs, emit_lists):
        n = min(len(r["arrivals"]), len(emit))
        lags = [(r["arrivals"][i] - emit[i]) * 1000 - one_way_ms for i in range(n)]
        rows.append({
            "tokens": n, "wire_per_token": r["wire"] / max(n, 1),
            "http_per_token": (r["wire"] - r["packets"] * PACKET_HEADERS) / max(n, 1),
            "p50": pct(lags, 50), "p95": pct(lags, 95), "max": max(lags),
            "done": (r["done"] - r["start"]) * 1000, "cpu_us": r["cpu_ns"] / 1000 / max(n, 1),
        })
    return {k: statistics.median(row[k] for row in rows) for k in rows[0]}


def run(args):
    import secrets
    replay_port, proxy_port, model_proxy_port, repeats = int(args[0]), int(args[1]), int(args[2]), int(args[3])
    results = []
    url = f"http://10.77.0.1:{proxy_port}"
    model_url = f"http://10.77.0.1:{model_proxy_port}"
    print("| link | upstream | mode | wire B/token | above TCP/IP B/token | added lag p50 ms | p95 ms | max ms | completion ms | workerd CPU µs/token |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, kbps, rtt in LINKS:
        shape(kbps)
        # Delay proxies for this link's RTT, in front of both workers.
        procs = [subprocess.Popen([sys.executable, __file__, "proxy", f"10.77.0.1:{proxy_port}", args[4], str(rtt / 2)]),
                 subprocess.Popen([sys.executable, __file__, "proxy", f"10.77.0.1:{model_proxy_port}", args[5], str(rtt / 2)])]
        time.sleep(0.5)
        for rate in (50, 100, 0):
            control(replay_port, rate)
            for mode in MODES:
                runs, emits = [], []
                for _ in range(repeats):
                    # A fresh key per run: nothing remembered from the last.
                    runs.append(one(url, mode, kbps, "bench-" + secrets.token_hex(6)))
                    emits.append(control(replay_port)["emit"])
                s = summarize(runs, emits, rtt / 2)
                label = f"replay {rate} tok/s" if rate else "replay unpaced"
                results.append({"link": name, "upstream": label, "mode": mode, **s})
                print(f"| {name} | {label} | {mode} | {s['wire_per_token']:.1f} | {s['http_per_token']:.1f} | {s['p50']:.0f} | {s['p95']:.0f} | {s['max']:.0f} | {s['done']:.0f} | {s['cpu_us']:.1f} |", flush=True)
        # One run per mode against the real model: emit times are not
        # known there, so lag is measured against the first token.
        for mode in ("gzip/event", "adaptive+hint"):
            r = one(model_url, mode, kbps, "bench-" + secrets.token_hex(6))
            n = len(r["arrivals"])
            http = (r["wire"] - r["packets"] * PACKET_HEADERS) / max(n, 1)
            print(f"| {name} | real model | {mode} | {r['wire'] / max(n, 1):.1f} | {http:.1f} | – | – | – | {(r['done'] - r['start']) * 1000:.0f} | {r['cpu_ns'] / 1000 / max(n, 1):.1f} |", flush=True)
            results.append({"link": name, "upstream": "real model", "mode": mode, "tokens": n,
                            "wire_per_token": r["wire"] / max(n, 1), "done": (r["done"] - r["start"]) * 1000})
        for p in procs:
            p.kill()
            p.wait()
    with open(os.environ.get("LINKS_JSON", "/tmp/tokenedge-links.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "replay":
        replay(int(args[0]), args[1])
    elif cmd == "proxy":
        proxy(args[0], args[1], args[2])
    elif cmd == "client":
        client(args[0], args[1], int(args[2]), args[3])
    elif cmd == "run":
        run(args)
