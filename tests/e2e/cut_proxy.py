"""A fault-injecting, strict HTTP/1.1 proxy in front of the real model
server, for the end-to-end tests: requests whose body contains CUT_MARKER
get the first CUT_AFTER bytes of the upstream's response body and then a
closed connection (an upstream failing mid-stream), those whose body
contains CUT_EARLY_MARKER the first CUT_EARLY_AFTER bytes (a short complete
answer cut part-way), and the first request whose body contains
CUT_ONCE_MARKER followed by a token the first CUT_AFTER bytes (later
requests with the same token, on any of its ports, pass: a replica that
dies once, for failover); a request whose body contains REPLAY_MARKER is
answered with a recorded real llama.cpp stream (tests/vectors), one event
every REPLAY_GAP seconds, without the model (a fast, deterministic load);
every other request is passed through untouched.
It can listen on several ports (several replicas, one cut state). Like servers that do not read chunked request
bodies (Python's http.server, some embedded servers and gateways), it
answers 411 Length Required to a request body without Content-Length. One
request per connection (it answers with `Connection: close`).

  python cut_proxy.py --port 18082 [--port 18083] --upstream 127.0.0.1:18081
"""
import argparse
import asyncio
import json
import os

CUT_MARKER = b"cut-me"
CUT_AFTER = 1200
CUT_EARLY_MARKER = b"cut-early"
CUT_EARLY_AFTER = 100
REPLAY_MARKER = b"replay-vector"
REPLAY_GAP = 0.005
# The same, one event every 25 ms (a 1 s answer: readers attach while it is
# under way).
SLOW_REPLAY_MARKER = b"replay-vector-slow"
SLOW_REPLAY_GAP = 0.025
REPLAY = open(os.path.join(os.path.dirname(__file__), "..", "vectors", "llamacpp_chat.sse"), "rb").read()
CUT_ONCE_MARKER = b"cut-once-"
# The cut-once tokens already cut.
cut_once_seen = set()


def replay_events(body):
    """The recorded stream's events, as a server that continues a trailing
    assistant message answers: its role announcement, then what follows
    the text already in the request."""
    events = REPLAY.split(b"\n\n")[:-1]
    try:
        last = json.loads(body)["messages"][-1]
    except (ValueError, KeyError, IndexError, TypeError):
        return events
    if last.get("role") != "assistant":
        return events
    done, had, rest = last.get("content") or "", "", []
    for event in events[1:]:
        if len(had) < len(done):
            chunk = json.loads(event[len(b"data: "):])
            had += (chunk.get("choices") or [{}])[0].get("delta", {}).get("content") or ""
            continue
        rest.append(event)
    assert had == done, (had, done)
    return events[:1] + rest


def cut_once(body):
    """Whether this body's cut-once token is seen for the first time."""
    at = body.find(CUT_ONCE_MARKER)
    if at < 0:
        return False
    token = body[at + len(CUT_ONCE_MARKER):].split(b" ")[0].split(b":")[0]
    if token in cut_once_seen:
        return False
    cut_once_seen.add(token)
    return True


async def read_head(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(h.split(":", 1)) for h in lines[1:] if ":" in h]
    return lines[0], [(k.strip(), v.strip()) for k, v in headers]


def header(headers, name):
    return next((v for k, v in headers if k.lower() == name), None)


async def handle(client_r, client_w, upstream):
    try:
        start, headers = await read_head(client_r)
        if header(headers, "transfer-encoding") is not None:
            client_w.write(b"HTTP/1.1 411 Length Required\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 52\r\nConnection: close\r\n\r\n"
                           b'{"error":{"message":"a Content-Length is required"}}')
            await client_w.drain()
            return
        else:
            body = await client_r.readexactly(int(header(headers, "content-length") or 0))
        if REPLAY_MARKER in body:
            client_w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n")
            gap = SLOW_REPLAY_GAP if SLOW_REPLAY_MARKER in body else REPLAY_GAP
            for event in replay_events(body):
                client_w.write(event + b"\n\n")
                await client_w.drain()
                await asyncio.sleep(gap)
            return
        host, port = upstream.split(":")
        up_r, up_w = await asyncio.open_connection(host, int(port))
        hop = ("connection", "keep-alive", "transfer-encoding", "content-length")
        kept = [(k, v) for k, v in headers if k.lower() not in hop] + [("Content-Length", str(len(body)))]
        up_w.write((start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "Connection: close\r\n\r\n").encode("latin-1") + body)
        await up_w.drain()
        status, rheaders = await read_head(up_r)
        rkept = [(k, v) for k, v in rheaders if k.lower() not in ("connection", "keep-alive")]
        client_w.write((status + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in rkept) + "Connection: close\r\n\r\n").encode("latin-1"))
        if CUT_MARKER in body or cut_once(body):
            budget = CUT_AFTER
        elif CUT_EARLY_MARKER in body:
            budget = CUT_EARLY_AFTER
        else:
            budget = None
        while True:
            chunk = await up_r.read(65536)
            if not chunk:
                break
            if budget is not None:
                chunk = chunk[:budget]
                budget -= len(chunk)
            client_w.write(chunk)
            await client_w.drain()
            if budget == 0:
                break
        up_w.close()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError):
        pass
    finally:
        client_w.close()


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, action="append", required=True)
    p.add_argument("--upstream", required=True)
    a = p.parse_args()
    servers = [
        await asyncio.start_server(lambda r, w: handle(r, w, a.upstream), "127.0.0.1", port)
        for port in a.port
    ]
    await asyncio.gather(*(s.serve_forever() for s in servers))


asyncio.run(main())
