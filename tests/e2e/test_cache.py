"""End-to-end: the KV store's three uses and replica routing, through the
real runtime in front of the real local model.

  exact cache      miss then hit, identical text, a proper stream; keys isolated
  prefix           a stored opening arrives before the upstream's first token,
                   then the continuation, in one stream whose usage adds up
  prefetch         202 at once; the warmed request's first token comes sooner
  failures         a stream cut mid-way stores nothing; a broken KV still serves;
                   a dead replica is skipped

Besides the variables test_stream.py uses:
  TOKENEDGE_FAULTS_URL  the function with UPSTREAM_URL = a dead port and a
                        proxy to the model that cuts requests containing "cut-me"
  TOKENEDGE_NOKV_URL    the function with KV_STORE naming a store that does not exist
  TOKENEDGE_KEY2        a second valid client key
"""
import json
import os
import time
import uuid

import httpx
import openai

URL = os.environ["TOKENEDGE_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
KEY2 = os.environ["TOKENEDGE_KEY2"]
FAULTS_URL = os.environ["TOKENEDGE_FAULTS_URL"]
NOKV_URL = os.environ["TOKENEDGE_NOKV_URL"]
MODEL_URL = os.environ["MODEL_URL"]
# KV writes run after the response; give them a moment to land.
SETTLE = 0.5


def chat(text, **extra):
    return {"model": "smollm2", "messages": [{"role": "user", "content": text}], "max_tokens": 24, "stream": True, **extra}


def fresh(topic):
    """A prompt no earlier run stored (the runtimes' KV persists per run only,
    but tests within a run must not share entries)."""
    return f"{topic} (ref {uuid.uuid4().hex[:8]})"


def stream(url, body, key=KEY, headers=None):
    """Returns (response headers, [(seconds, event JSON)], saw [DONE])."""
    events, done = [], False
    start = time.monotonic()
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}", **(headers or {})}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append((time.monotonic() - start, json.loads(line[6:])))
        return r.headers, events, done


def pieces(events):
    return [(t, c) for t, e in events for c in [((e.get("choices") or [{}])[0].get("delta") or {}).get("content")] if c]


def text(events):
    return "".join(c for _, c in pieces(events))


def usage(events):
    return next(e["usage"] for _, e in reversed(events) if e.get("usage"))


def test_exact_cache_miss_then_hit():
    body = chat(fresh("Name three colours."), temperature=0)
    h1, e1, done1 = stream(URL, body)
    assert h1["x-cache"] == "miss" and done1
    time.sleep(SETTLE)
    h2, e2, done2 = stream(URL, body)
    assert h2["x-cache"] == "hit", h2
    assert h2["server-timing"].startswith("cache;desc=hit;dur=")
    assert done2
    assert text(e2) == text(e1) and text(e2)
    assert len(pieces(e2)) == len(pieces(e1)), "replayed in the pieces it was generated in"
    assert usage(e2) == usage(e1)
    assert pieces(e2)[0][0] < pieces(e1)[0][0], "a hit starts sooner than the generation did"
    # The same entry answers stream: false as JSON.
    r = httpx.post(f"{URL}/v1/chat/completions", json={**body, "stream": False}, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)
    assert r.headers["x-cache"] == "hit"
    assert r.json()["choices"][0]["message"]["content"] == text(e1)
    # The official SDK reads a replayed stream like a live one.
    sdk = openai.OpenAI(base_url=f"{URL}/v1", api_key=KEY)
    got = "".join(c.choices[0].delta.content or "" for c in sdk.chat.completions.create(**body) if c.choices)
    assert got == text(e1)


def test_keys_do_not_see_each_others_entries():
    body = chat(fresh("Say hello."), temperature=0)
    assert stream(URL, body, key=KEY)[0]["x-cache"] == "miss"
    time.sleep(SETTLE)
    assert stream(URL, body, key=KEY2)[0]["x-cache"] == "miss"
    time.sleep(SETTLE)
    assert stream(URL, body, key=KEY)[0]["x-cache"] == "hit"
    assert stream(URL, body, key=KEY2)[0]["x-cache"] == "hit"


def test_no_store_and_sampled_requests_bypass():
    body = chat(fresh("Count to five."), temperature=0)
    h, _, _ = stream(URL, body, headers={"Cache-Control": "no-store"})
    assert "x-cache" not in h or h["x-cache"] == "bypass"
    time.sleep(SETTLE)
    assert stream(URL, body)[0]["x-cache"] == "miss", "no-store stored nothing"
    assert stream(URL, chat("Count to five.", temperature=0.9))[0]["x-cache"] == "bypass"


def test_prefix_arrives_first_and_is_continued():
    body = chat(fresh("Write a short poem about the sea."), temperature=0.8, max_tokens=40)
    on = {"X-Tokenedge-Prefix": "on"}
    h1, e1, _ = stream(URL, body, headers=on)
    assert h1["x-cache"] == "miss"
    time.sleep(SETTLE)
    h2, e2, done = stream(URL, body, headers=on)
    assert h2["x-cache"] == "prefix", h2
    assert done
    p1, p2 = pieces(e1), pieces(e2)
    k = min(16, len(p1))
    opening = "".join(c for _, c in p1[:k])
    assert text(e2).startswith(opening)
    assert len(p2) > k, "the upstream continued after the opening"
    # The opening is out before the upstream's first token.
    assert p2[k - 1][0] + 0.01 < p2[k][0], [round(t, 3) for t, _ in p2[: k + 2]]
    roles = sum(1 for _, e in e2 if ((e.get("choices") or [{}])[0].get("delta") or {}).get("role"))
    assert roles == 1
    u = usage(e2)
    assert u["completion_tokens"] >= len(p2) - 1 and u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]
    # Without the header (the deployment asks for it per request) no prefix.
    assert stream(URL, body)[0]["x-cache"] == "bypass"


def busy():
    return any(s.get("is_processing") for s in httpx.get(f"{MODEL_URL}/slots", timeout=10).json())


def ttft(body):
    _, events, _ = stream(URL, body)
    return pieces(events)[0][0]


def test_prefetch_then_request_starts_sooner():
    def long_system(seed):
        facts = " ".join(f"Fact {i}: item {seed}-{i} is stored on shelf {i % 7}." for i in range(40))
        return f"You are a warehouse assistant. {facts}"

    def convo(seed, question):
        return {"model": "smollm2", "max_tokens": 8, "temperature": 0.7, "stream": True, "messages": [
            {"role": "system", "content": long_system(seed)}, {"role": "user", "content": question}]}

    cold_seed, warm_seed = uuid.uuid4().hex[:6], uuid.uuid4().hex[:6]
    cold = ttft(convo(cold_seed, "Where is item 3?"))
    t0 = time.monotonic()
    r = httpx.post(f"{URL}/v1/prefetch", json={k: v for k, v in convo(warm_seed, "Where is it").items() if k != "stream"},
                   headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    answered = time.monotonic() - t0
    assert r.status_code == 202 and r.json()["status"] == "accepted"
    assert answered < cold / 2, (answered, cold)
    time.sleep(0.3)
    deadline = time.monotonic() + 60
    while busy() and time.monotonic() < deadline:
        time.sleep(0.1)
    warm = ttft(convo(warm_seed, "Where is item 3?"))
    assert warm < cold / 2, f"warmed TTFT {warm:.3f}s vs cold {cold:.3f}s"


def test_prefetch_rejects_bad_input():
    r = httpx.post(f"{URL}/v1/prefetch", content=b"{", headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["message"]
    r = httpx.post(f"{URL}/v1/prefetch", json={"model": "m", "messages": []}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


def test_upstream_cut_mid_stream_stores_nothing():
    body = chat(fresh("cut-me: list the planets."), temperature=0, max_tokens=40)
    for _ in range(2):
        h, events, done = stream(FAULTS_URL, body)
        assert h["x-cache"] == "miss", "the cut answer was never stored"
        assert not done
        assert any("error" in e for _, e in events), events[-2:]
        time.sleep(SETTLE)


def test_dead_replica_is_skipped():
    # Several conversations: some rank the dead replica first and fall back.
    # The live replica is the strict proxy: it answers 411 to a request body
    # sent without Content-Length, so this also checks that every runtime
    # sends one.
    for i in range(4):
        h, events, done = stream(FAULTS_URL, chat(f"Conversation {i}: say something."))
        assert done and text(events)


def test_broken_kv_still_serves():
    body = chat(fresh("Name a fruit."), temperature=0)
    for _ in range(2):
        h, events, done = stream(NOKV_URL, body)
        assert h["x-cache"] == "miss" and done and text(events)
        time.sleep(SETTLE)
    h, events, done = stream(NOKV_URL, body, headers={"X-Tokenedge-Prefix": "on"})
    assert done and text(events)
