"""Per-key limits through the real runtime, in front of the real model:
TOKENEDGE_LIMITED_URL is the function with RATE_LIMIT_RPM=4 and
MAX_STREAMS_PER_KEY=1 (a Durable Object per key on Workers, the key-value
store on Spin), and keys `limit-a`, `limit-b`, `limit-c`."""
import json
import os
import time

import httpx
import openai
import pytest

from test_stream import _raw, _read_response, assert_error

URL = os.environ["TOKENEDGE_LIMITED_URL"]
RUNTIME = os.environ.get("TOKENEDGE_RUNTIME", "runtime")

CHAT = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse keeper."}],
    "max_tokens": 64,
    "stream": True,
}


def auth(key):
    return {"Authorization": f"Bearer {key}"}


def test_one_generation_at_a_time_per_key():
    """While key A streams, A's second stream is 429 `too_many_streams`
    (with Retry-After) and B's is served; once A's first stream ended, A is
    served again."""
    with httpx.Client(timeout=120) as client:
        with client.stream("POST", f"{URL}/v1/chat/completions", json=CHAT, headers=auth("limit-a")) as first:
            assert first.status_code == 200
            lines = first.iter_lines()
            assert any(line.startswith("data: {") for line in lines)  # generating
            second = client.post(f"{URL}/v1/chat/completions", json=CHAT, headers=auth("limit-a"))
            err = assert_error(second, 429, "too_many_streams")
            assert int(second.headers["retry-after"]) >= 1
            assert "generations running" in err["message"]
            other = client.post(f"{URL}/v1/chat/completions", json=dict(CHAT, max_tokens=4), headers=auth("limit-b"))
            assert other.status_code == 200, other.text
            rest = list(lines)
            assert rest[-1] == "data: [DONE]" or "data: [DONE]" in rest
        # The lease went back when the stream ended (a release runs in the
        # background: give it a moment).
        for _ in range(20):
            again = client.post(f"{URL}/v1/chat/completions", json=dict(CHAT, max_tokens=4), headers=auth("limit-a"))
            if again.status_code != 429:
                break
            time.sleep(0.1)
        assert again.status_code == 200, again.text


def test_requests_per_minute_then_429_with_retry_after():
    """Four requests a minute for key C: the fifth is refused with 429, a
    Retry-After in seconds and the API's error shape, before its body is
    read; the official SDK raises RateLimitError."""
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    statuses = []
    with httpx.Client(timeout=60) as client:
        for _ in range(4):
            statuses.append(client.post(f"{URL}/v1/chat/completions", json=body, headers=auth("limit-c")).status_code)
    assert statuses == [200] * 4, statuses

    # Only the head: the answer comes without the body being sent.
    sock = _raw(URL)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Authorization: Bearer limit-c\r\nContent-Length: 100000\r\n\r\n")
    refused = _read_response(sock)
    sock.close()
    err = assert_error(refused, 429, "rate_limit_exceeded")
    retry = int(refused.headers["retry-after"])
    assert 1 <= retry <= 60, retry
    assert err["type"] == "requests"

    client = openai.OpenAI(base_url=f"{URL}/v1", api_key="limit-c", max_retries=0)
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Hi"}], max_tokens=1)
    print(f"[{RUNTIME}] 429 after 4 requests/min, Retry-After {retry} s")
