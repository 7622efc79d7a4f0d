"""End-to-end suite: real clients (curl, the official openai SDK, raw HTTP)
against tokenedge running in a real runtime, in front of the real local model.

The runtime under test is given by environment variables (scripts/test.sh
sets them after starting the services):

  TOKENEDGE_URL       the function, with API_KEYS containing TOKENEDGE_KEY
  TOKENEDGE_KEY       a valid client key
  TOKENEDGE_DEAD_URL  the same function with its upstream pointing at a closed port
  TOKENEDGE_FAULTS_URL  the same function with a dead replica, then cut_proxy.py
  TOKENEDGE_NOKEYS_URL  the same function with API_KEYS="," (no usable key)
  MODEL_URL           the llama.cpp server itself (for its /slots view)
  TOKENEDGE_RUNTIME   a label for the report (e.g. "workerd")
"""
import json
import os
import socket
import subprocess
import time
import urllib.parse
import uuid

import httpx
import openai
import pytest

URL = os.environ["TOKENEDGE_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
DEAD_URL = os.environ["TOKENEDGE_DEAD_URL"]
# Its second replica is tests/e2e/cut_proxy.py in front of the model.
FAULTS_URL = os.environ["TOKENEDGE_FAULTS_URL"]
NOKEYS_URL = os.environ["TOKENEDGE_NOKEYS_URL"]
MODEL_URL = os.environ["MODEL_URL"]
RUNTIME = os.environ.get("TOKENEDGE_RUNTIME", "runtime")

CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Describe a walk along the seaside in a few sentences."}],
    "max_tokens": 48,
    "temperature": 0.7,
}
AUTH = {"Authorization": f"Bearer {KEY}"}
# Ten or more tokens at the model's pace (~15-25 ms each) spread over well
# over 0.1 s; a buffered stream arrives within a few milliseconds. The
# answers' lengths vary (temperature 0.7), so the bar is set for the shortest.
SPREAD = 0.1


def stream_with_curl(url, body, headers=AUTH, compressed=False):
    """Runs curl -N and returns [(arrival_seconds, line)] for every line."""
    args = ["curl", "-sN", "--max-time", "120"] + (["--compressed"] if compressed else []) + [url, "-H", "Content-Type: application/json", "-d", json.dumps(body)]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    start = time.monotonic()
    lines = []
    with subprocess.Popen(args, stdout=subprocess.PIPE) as p:
        for raw in p.stdout:
            lines.append((time.monotonic() - start, raw.decode().rstrip("\n")))
    return lines


def content_events(lines):
    out = []
    for t, line in lines:
        if line.startswith("data: {"):
            event = json.loads(line[6:])
            choices = event.get("choices") or []
            text = "".join((c.get("delta") or {}).get("content") or c.get("text") or "" for c in choices)
            if text:
                out.append((t, text))
    return out


def assert_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = response.json()["error"]
    for field in ("message", "type", "param", "code"):
        assert field in err, err
    assert err["message"]
    if code:
        assert err["code"] == code, err
    if param:
        assert err["param"] == param, err
    return err


@pytest.mark.parametrize("compressed", [False, True], ids=["identity", "gzip"])
def test_curl_stream_arrives_token_by_token(compressed):
    lines = stream_with_curl(f"{URL}/v1/chat/completions", {**CHAT, "stream": True}, compressed=compressed)
    events = content_events(lines)
    assert len(events) >= 10, lines
    assert lines[-1][1] == "" or any(l == "data: [DONE]" for _, l in lines)
    assert [l for _, l in lines if l.startswith("data: ")][-1] == "data: [DONE]"
    usage = [json.loads(l[6:]) for _, l in lines if l.startswith("data: {") and '"usage"' in l]
    assert usage and usage[-1]["usage"]["completion_tokens"] > 0
    # llama.cpp's own fields pass through.
    assert "timings" in usage[-1]
    # The timing shape: content arrives spread over the generation, not in
    # one burst at its end. The model reports how long it generated; the
    # first-to-last spread must be a good part of that (a buffered stream
    # has a spread near zero, whatever the answer's length).
    generated = usage[-1]["timings"]["predicted_ms"] / 1000
    first, last = events[0][0], events[-1][0]
    assert last - first >= 0.5 * generated, f"first content at {first:.3f}s, last at {last:.3f}s, generation took {generated:.3f}s: the stream was buffered"
    assert len({round(t, 3) for t, _ in events}) >= 5, events


def test_gzip_is_negotiated_and_decodes_event_by_event():
    """Raw gzip bytes, inflated as they arrive: the events become readable
    one by one over the generation, not all at the end."""
    import zlib

    headers = {**AUTH, "Accept-Encoding": "gzip"}
    start = time.monotonic()
    with httpx.stream("POST", f"{URL}/v1/chat/completions", json={**CHAT, "stream": True}, headers=headers, timeout=60) as r:
        assert r.headers["content-encoding"] == "gzip"
        assert "accept-encoding" in r.headers["vary"].lower()
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        wire, text, decoded_at = 0, "", []
        for raw in r.iter_raw():
            wire += len(raw)
            text += inflater.decompress(raw).decode()
            decoded_at += [time.monotonic() - start] * (text.count('"content":"') - len(decoded_at))
    assert text.rstrip().endswith("data: [DONE]")
    assert len(decoded_at) >= 10
    assert decoded_at[-1] - decoded_at[0] >= SPREAD, "events were held back and decoded together"
    assert wire * 2 < len(text.encode()), (wire, len(text))


def test_stream_headers():
    with httpx.stream("POST", f"{URL}/v1/chat/completions", json={**CHAT, "stream": True, "max_tokens": 4}, headers=AUTH, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/event-stream; charset=utf-8"
        assert r.headers["cache-control"] == "no-cache, no-transform"
        assert r.headers["x-accel-buffering"] == "no"
        assert "server-timing" in r.headers
        body = b"".join(r.iter_bytes())
    assert body.endswith(b"data: [DONE]\n\n")


def test_legacy_completions_stream():
    lines = stream_with_curl(
        f"{URL}/v1/completions", {"model": "smollm2", "prompt": "Once upon a time", "max_tokens": 16, "stream": True}
    )
    assert len(content_events(lines)) >= 5
    assert [l for _, l in lines if l.startswith("data: ")][-1] == "data: [DONE]"


def client(base=URL, key=KEY):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=120)


def test_openai_sdk_stream():
    start = time.monotonic()
    stream = client().chat.completions.create(
        **CHAT, stream=True, stream_options={"include_usage": True}
    )
    arrivals, text, usage = [], "", None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append(time.monotonic() - start)
            text += chunk.choices[0].delta.content
        if chunk.usage:
            usage = chunk.usage
    assert len(arrivals) >= 10 and text.strip()
    assert usage is not None and usage.completion_tokens > 0
    assert arrivals[-1] - arrivals[0] >= SPREAD


def test_openai_sdk_non_stream():
    result = client().chat.completions.create(**CHAT)
    assert result.choices[0].message.content.strip()
    assert result.choices[0].finish_reason in ("stop", "length")
    assert result.usage.total_tokens > 0


def test_openai_sdk_wrong_key_is_401():
    with pytest.raises(openai.AuthenticationError) as e:
        client(key="not-a-key").chat.completions.create(**CHAT)
    assert e.value.status_code == 401


def test_invalid_json_is_400():
    r = httpx.post(f"{URL}/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={**AUTH, "content-type": "application/json"})
    assert_error(r, 400, "invalid_request")


def test_missing_messages_is_400():
    r = httpx.post(f"{URL}/v1/chat/completions", json={"model": "smollm2"}, headers=AUTH)
    assert_error(r, 400, "invalid_request", "messages")


def test_two_mib_body_is_413():
    # The 413 comes from the declared length, before the body is read, so
    # the client reads while it still has body to send (as a phone on a slow
    # uplink does); a client that pushes all 2 MiB first may lose the early
    # answer when the connection closes under it.
    big = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (2 * 1024 * 1024)}]}).encode()
    sock = _raw(URL)
    # 64 KiB: what fits in the socket buffers even when the function has
    # answered and closed after the head (512 KiB once met a closed
    # connection mid-send on Spin: a broken pipe before the answer was read).
    try:
        sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Authorization: Bearer {KEY}\r\nContent-Length: {len(big)}\r\n\r\n".encode() + big[:64 * 1024])
    except (BrokenPipeError, ConnectionResetError):
        pass  # the answer came first; it is read below
    r = _read_response(sock)
    sock.close()
    assert_error(r, 413, "payload_too_large")


def test_wrong_content_type_is_415():
    r = httpx.post(f"{URL}/v1/chat/completions", content=json.dumps(CHAT), headers={**AUTH, "content-type": "text/plain"})
    assert_error(r, 415, "unsupported_media_type")


def test_wrong_and_missing_key_are_401():
    r = httpx.post(f"{URL}/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer wrong"})
    assert_error(r, 401, "invalid_api_key")
    r = httpx.post(f"{URL}/v1/chat/completions", json=CHAT)
    assert_error(r, 401, "invalid_api_key")


def test_unknown_route_is_404():
    assert_error(httpx.get(f"{URL}/v1/nothing-here", headers=AUTH), 404, "not_found")


def test_upstream_down_is_502():
    for stream in (False, True):
        r = httpx.post(f"{DEAD_URL}/v1/chat/completions", json={**CHAT, "stream": stream}, headers=AUTH, timeout=60)
        assert_error(r, 502, "upstream_unreachable")
        # A deployment without DEBUG_HEADERS says nothing of how it served.
        assert "x-cache" not in r.headers and "server-timing" not in r.headers, dict(r.headers)
    r = httpx.get(f"{DEAD_URL}/healthz")
    assert r.status_code == 503 and r.json()["upstream"]["reachable"] is False


def test_a_cut_complete_answer_is_aborted_not_ended():
    """A `stream: false` answer whose upstream body breaks part-way reaches
    the client as a broken response, never as a complete-looking 200 with
    truncated JSON."""
    body = {**CHAT, "messages": [{"role": "user", "content": "cut-early: describe the sea."}]}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        r = httpx.post(f"{FAULTS_URL}/v1/chat/completions", json=body, headers=AUTH, timeout=120)
        print(f"[{RUNTIME}] got {r.status_code} with {len(r.content)} bytes: {r.content[:120]!r}")
        json.loads(r.content)


def test_no_usable_api_keys_fails_closed():
    """API_KEYS="," parses to no key: the gateway stays closed (503), with or
    without a bearer token, and /healthz still answers."""
    for headers in ({}, AUTH):
        r = httpx.post(f"{NOKEYS_URL}/v1/chat/completions", json=CHAT, headers=headers, timeout=60)
        assert_error(r, 503, "auth_not_configured")
    r = httpx.get(f"{NOKEYS_URL}/healthz", timeout=60)
    assert r.status_code == 200


def _read_response(sock):
    """One HTTP/1.1 response from a raw socket, as an httpx.Response."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(h.split(": ", 1)) for h in lines[1:]]
    names = {k.lower(): v for k, v in headers}
    if names.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while True:
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                rest += sock.recv(65536)
            body, rest = body + rest[:size], rest[size + 2:]
            if size == 0:
                break
    else:
        length = int(names.get("content-length", "0"))
        while len(rest) < length:
            rest += sock.recv(65536)
        body = rest[:length]
    headers = [(k, v) for k, v in headers if k.lower() not in ("transfer-encoding", "content-length")]
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


def _raw(url):
    """A socket to the function, for requests httpx would not send."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.settimeout(5)
    return sock


def test_a_refused_request_is_answered_before_its_body_is_read():
    """No key and a declared 50 MB body: the 401 comes after the first MB of
    the upload, without waiting for (or reading) the rest."""
    sock = _raw(URL)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Length: 52428800\r\n\r\n" + b" " * (1024 * 1024))
    started = time.monotonic()
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    print(f"[{RUNTIME}] 401 {time.monotonic() - started:.2f}s after the first MB of a 50 MB upload")


def test_a_body_past_the_limit_is_cut_off():
    """A chunked upload (no Content-Length) with a valid key: 413 as soon as
    it passes MAX_BODY_BYTES (1 MiB here), while the client is still
    sending."""
    sock = _raw(URL)
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Authorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
    piece = b" " * (256 * 1024)
    for _ in range(6):  # 1.5 MiB, and no last chunk
        sock.sendall(b"%x\r\n" % len(piece) + piece + b"\r\n")
    answer = sock.recv(4096)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_models_and_health():
    r = httpx.get(f"{URL}/v1/models", headers=AUTH)
    assert r.status_code == 200 and r.json()["data"]
    r = httpx.get(f"{URL}/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok"


def test_cors_preflight():
    r = httpx.options(
        f"{URL}/v1/chat/completions",
        headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization, content-type"},
    )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] == "*"
    assert "POST" in r.headers["access-control-allow-methods"]


def slots():
    return httpx.get(f"{MODEL_URL}/slots", timeout=10).json()


def busy_slots():
    return [s["id"] for s in slots() if s["is_processing"]]


def test_client_disconnect_stops_generation():
    """Close the connection mid-stream and never come back; the model server
    must stop decoding that request (seen in its /slots view) long before
    max_tokens: at the end of the grace period a resumable stream gets
    (RESUME_GRACE_SECS, 2 s on the test instances)."""
    deadline = time.monotonic() + 30
    while busy_slots() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not busy_slots(), "model server still busy from an earlier test"

    body = json.dumps({**CHAT, "stream": True, "max_tokens": 1500, "temperature": 1.0,
                       "messages": [{"role": "user", "content": "Write a very long story about a lighthouse keeper."}]}).encode()
    u = urllib.parse.urlsplit(URL)
    sock = socket.create_connection((u.hostname, u.port), timeout=60)
    sock.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: {u.netloc}\r\nAuthorization: Bearer {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
    )
    received = b""
    while received.count(b'"content":"') < 10:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    busy = busy_slots()
    assert busy, "the request should be decoding now"
    decoded_at_close = max(s["next_token"][0]["n_decoded"] for s in slots() if s["id"] in busy)
    sock.close()
    closed_at = time.monotonic()

    while busy_slots() and time.monotonic() - closed_at < 10:
        time.sleep(0.1)
    stopped_after = time.monotonic() - closed_at
    assert not busy_slots(), "the model server kept generating after the client left"
    # Without the cancel it would run on to 1500 tokens (~30 s at 50 tok/s).
    assert stopped_after < 5, stopped_after
    print(f"[{RUNTIME}] disconnect at {decoded_at_close} tokens decoded; upstream stopped {stopped_after:.2f}s later")


def test_an_upstream_cut_mid_stream_fails_over_to_the_next_replica():
    """The replica serving the stream dies after ~1200 bytes (the cutting
    proxy's cut-once marker); another replica continues from the text
    already sent. The client sees one complete answer: one role
    announcement, no error, `[DONE]` once."""
    token = uuid.uuid4().hex[:12]
    body = {
        **CHAT,
        "messages": [{"role": "user", "content": f"cut-once-{token}: list the planets of the solar system."}],
        "max_tokens": 60,
        "temperature": 0,
        "stream": True,
    }
    headers = {**AUTH, "cache-control": "no-store", "accept-encoding": "identity"}
    with httpx.stream("POST", f"{FAULTS_URL}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200
        raw = b"".join(r.iter_raw()).decode()
    datas = [l[6:] for l in raw.split("\n") if l.startswith("data: ")]
    assert datas[-1] == "[DONE]" and datas.count("[DONE]") == 1, datas[-3:]
    chunks = [json.loads(d) for d in datas[:-1]]
    assert not any("error" in c for c in chunks), chunks[-2:]
    roles = [c for c in chunks if c.get("choices") and c["choices"][0].get("delta", {}).get("role")]
    assert len(roles) == 1, roles
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices"))
    # The proxy cut after ~1200 bytes (4 or 5 events): the rest came from
    # the other replica.
    assert len([c for c in chunks if c.get("choices") and c["choices"][0]["delta"].get("content")]) > 8, text
    # Compared with the same request where nothing fails.
    with httpx.stream("POST", f"{URL}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        whole = "".join(
            json.loads(l[6:])["choices"][0]["delta"].get("content") or ""
            for l in b"".join(r.iter_raw()).decode().split("\n")
            if l.startswith("data: {") and json.loads(l[6:]).get("choices")
        )
    print(f"[{RUNTIME}] failover: {len(text)} chars, same as an uninterrupted run: {text == whole}")
