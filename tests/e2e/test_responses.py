"""The Responses API (`POST /v1/responses`) end to end: the official openai
Python SDK, unchanged, through the runtime in front of the real model.

  TOKENEDGE_URL        the function (DEBUG_HEADERS on, the model upstream)
  TOKENEDGE_FAULTS_URL the function with a dead replica, then cut_proxy.py,
                       which cuts requests containing "cut-me"
"""
import json
import os
import time
import uuid
import zlib

import httpx
import openai
import pytest

URL = os.environ["TOKENEDGE_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
FAULTS_URL = os.environ["TOKENEDGE_FAULTS_URL"]
AUTH = {"Authorization": f"Bearer {KEY}"}
# KV writes run after the response; give them a moment to land.
SETTLE = 0.5


def client(base=URL):
    return openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0, timeout=120)


def ask(text, **extra):
    return {"model": "smollm2", "input": text, "max_output_tokens": 24, **extra}


def fresh(topic):
    return f"{topic} (ref {uuid.uuid4().hex[:8]})"


def sse_events(body):
    """[(event name, data JSON)] of an SSE body, comments left out."""
    out = []
    for block in body.split("\n\n"):
        lines = [l for l in block.split("\n") if l and not l.startswith(":")]
        data = [l[6:] for l in lines if l.startswith("data: ")]
        if data:
            name = next((l[7:] for l in lines if l.startswith("event: ")), None)
            out.append((name, json.loads(data[0])))
    return out


def test_sdk_stream_text_equals_the_whole_answer_at_temperature_0():
    # The SDK builds its event models on first use (about 0.5 s here, in
    # which every event of a short answer arrives): warmed first, so the
    # arrival times below are the stream's.
    for _ in client().responses.create(**ask("Hi.", max_output_tokens=2), stream=True):
        pass
    body = ask(fresh("Name three rivers."), temperature=0)
    start = time.monotonic()
    text, arrivals, types, final = "", [], [], None
    for event in client().responses.create(**body, stream=True):
        types.append(event.type)
        if event.type == "response.output_text.delta":
            text += event.delta
            arrivals.append(time.monotonic() - start)
        if event.type == "response.completed":
            final = event.response
    assert types[0] == "response.created" and types[-1] == "response.completed", types
    assert len(arrivals) >= 5 and text.strip()
    assert arrivals[-1] - arrivals[0] > 0.05, "the deltas arrived together: buffered"
    assert final.output_text == text
    assert final.usage.output_tokens > 0
    # The same request, not streamed (no-cache: from the model, not the
    # entry the stream just stored).
    whole = client().responses.create(**body, extra_headers={"Cache-Control": "no-cache"})
    assert whole.output_text == text
    assert whole.status == "completed"


def test_a_cut_upstream_raises_in_the_sdk():
    events = []
    with pytest.raises(openai.APIError) as e:
        for event in client(FAULTS_URL).responses.create(**ask(fresh("cut-me: list the planets."), max_output_tokens=64), stream=True):
            events.append(event.type)
    assert "response.completed" not in events
    assert any(t == "response.output_text.delta" for t in events), events
    assert "upstream" in str(e.value).lower(), e.value


def test_a_cache_hit_replays_an_identical_event_sequence():
    body = ask(fresh("Name three colours."), temperature=0)
    first = [e.model_dump() for e in client().responses.create(**body, stream=True)]
    time.sleep(SETTLE)
    raw = client().responses.with_raw_response.create(**body, stream=True)
    assert raw.headers["x-cache"] == "hit", dict(raw.headers)
    again = [e.model_dump() for e in raw.parse()]
    assert again == first
    # The same entry answers stream: false with the final response.
    whole = client().responses.with_raw_response.create(**body)
    assert whole.headers["x-cache"] == "hit"
    assert whole.parse().output_text == first[-1]["response"]["output"][0]["content"][0]["text"]


def test_gzip_decodes_event_by_event():
    headers = {**AUTH, "Accept-Encoding": "gzip"}
    body = ask(fresh("Describe a walk along the seaside."), max_output_tokens=48, stream=True)
    start = time.monotonic()
    with httpx.stream("POST", f"{URL}/v1/responses", json=body, headers=headers, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip"
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        text, decoded_at = "", []
        for raw in r.iter_raw():
            text += inflater.decompress(raw).decode()
            decoded_at += [time.monotonic() - start] * (text.count("response.output_text.delta\n") - len(decoded_at))
    assert len(decoded_at) >= 10
    assert decoded_at[-1] - decoded_at[0] >= 0.1, "events were held back and decoded together"
    assert sse_events(text)[-1][0] == "response.completed"


def test_compact_format_carries_the_text_as_tokens():
    body = ask(fresh("Say hello."), temperature=0, stream=True)
    r = httpx.post(f"{URL}/v1/responses", json=body, headers={**AUTH, "X-Tokenedge-Format": "compact"}, timeout=60)
    events = sse_events(r.text)
    tokens = "".join(d for name, d in events if name is None)
    name, done = events[-1]
    assert name == "done" and done["finish_reason"] in ("stop", "length")
    assert done["usage"]["output_tokens"] > 0
    assert tokens.strip()


def test_a_stream_resumes_starting_after_an_event():
    body = ask(fresh("Describe a forest."), max_output_tokens=32, stream=True)
    r = httpx.post(f"{URL}/v1/responses", json=body, headers=AUTH, timeout=60)
    stream_id = r.headers["x-tokenedge-stream"]
    whole = sse_events(r.text)
    # llama.cpp numbers no event: the cursor is the gateway's `id`.
    rest = httpx.get(f"{URL}/v1/streams/{stream_id}?starting_after=3", headers=AUTH, timeout=60)
    assert rest.status_code == 200
    assert sse_events(rest.text) == whole[3:]


def test_bad_input_is_a_400_in_the_apis_shape():
    with pytest.raises(openai.BadRequestError) as e:
        client().responses.create(model="smollm2", input=3)
    assert e.value.body["param"] == "input"
    r = httpx.post(f"{URL}/v1/responses", json={"model": "smollm2"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
