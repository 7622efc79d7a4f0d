"""Resumable streams against the real model, on the runtime under test:
a client cut off at random points (inside an event, inside a compressed
chunk) reattaches with the last id it fully received, until the end, and
gets every event exactly once; a cancel stops the generation; bad ids and
cursors are refused. Environment as in test_stream.py."""

import os
import random
import time

import httpx
import pytest

from sse_reader import Reader, text_of, vector_text

URL = os.environ["TOKENEDGE_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
OTHER_KEY = os.environ.get("TOKENEDGE_KEY2", "e2e-key-1")
MODEL_URL = os.environ["MODEL_URL"]
RUNTIME = os.environ.get("TOKENEDGE_RUNTIME", "runtime")
FAULTS_URL = os.environ.get("TOKENEDGE_FAULTS_URL", "")
# The instance without a KV store.
NOKV_URL = os.environ.get("TOKENEDGE_NOKV_URL", "")
TRIALS = int(os.environ.get("TOKENEDGE_RESUME_TRIALS", "10"))
# Trials per coding against the recorded stream the cutting proxy replays.
REPLAY_TRIALS = int(os.environ.get("TOKENEDGE_REPLAY_TRIALS", "50"))


def headers(key=KEY, **extra):
    h = {
        "authorization": f"Bearer {key}",
        "x-tokenedge-format": "compact",
        "accept-encoding": "identity",
    }
    h.update(extra)
    return h


def body(max_tokens=48, prompt="List five fruits, one per line."):
    return {
        "model": "m",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "seed": 7,
        "stream": True,
    }


def read(resp, coding, cut_at=None):
    """Reads events until the end, or until `cut_at` wire bytes (then the
    connection is dropped). Returns (events, ended)."""
    reader = Reader(coding)
    events, seen = [], 0
    for chunk in resp.iter_raw():
        if cut_at is not None and seen + len(chunk) > cut_at:
            events += reader.feed(chunk[: cut_at - seen])
            return events, False
        seen += len(chunk)
        events += reader.feed(chunk)
        if any(e.get("event") == "done" for e in events):
            return events, True
    return events, False


def uninterrupted(client, coding, request=None, url=URL):
    h = headers(**{"accept-encoding": coding, "cache-control": "no-store"})
    with client.stream("POST", f"{url}/v1/chat/completions", json=request or body(), headers=h) as r:
        assert r.status_code == 200
        events, ended = read(r, coding)
    assert ended
    return text_of(events)


@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_random_disconnects_lose_and_repeat_nothing(coding):
    with httpx.Client(timeout=60) as client:
        whole = uninterrupted(client, coding)
        assert len(whole) > 20
        trials(client, URL, body(), whole, coding, TRIALS)


@pytest.mark.skipif(not FAULTS_URL, reason="no instance behind the replaying proxy")
@pytest.mark.parametrize("coding", ["identity", "gzip"])
def test_random_disconnects_of_a_replayed_real_stream(coding):
    """The same, many times, on a recorded real stream the cutting proxy
    replays (fast and deterministic, without the model)."""
    replay = body(prompt="replay-vector: anything")
    with httpx.Client(timeout=60) as client:
        trials(client, FAULTS_URL, replay, vector_text(), coding, REPLAY_TRIALS)


def trials(client, url, request, whole, coding, n):
    """`n` runs of `request`, each cut at random points and resumed until
    its end; each must assemble to `whole`."""
    rng = random.Random(f"{RUNTIME}-{coding}-{url}")
    resumes = 0
    for trial in range(n):
        h = headers(**{"accept-encoding": coding, "cache-control": "no-store"})
        got, last, ended = [], 0, False
        with client.stream("POST", f"{url}/v1/chat/completions", json=request, headers=h) as r:
            assert r.status_code == 200
            stream = r.headers["x-tokenedge-stream"]
            events, ended = read(r, coding, cut_at=rng.randint(1, 800))
        while True:
            for e in events:
                if "id" in e:
                    seq = int(e["id"])
                    assert seq > last, f"event {seq} again after {last}"
                    last = seq
            got += events
            if ended:
                break
            resumes += 1
            assert resumes < n * 50, "no progress"
            h = headers(**{"accept-encoding": coding, "last-event-id": str(last)})
            with client.stream("GET", f"{url}/v1/streams/{stream}", headers=h) as r:
                assert r.status_code == 200, r.read()
                events, ended = read(r, coding, cut_at=rng.randint(1, 1200))
        assert text_of(got) == whole, f"trial {trial}"
    print(f"[{RUNTIME}] {n} trials, {coding}, {url}: {resumes} resumes, every text whole")


def leave_after(client, url, request, n):
    """Starts streaming `request` and leaves after `n` numbered events;
    returns the stream id and the events read."""
    h = headers(**{"cache-control": "no-store"})
    with client.stream("POST", f"{url}/v1/chat/completions", json=request, headers=h) as r:
        assert r.status_code == 200
        reader, events = Reader("identity"), []
        for chunk in r.iter_raw():
            events += reader.feed(chunk)
            if sum(1 for e in events if "id" in e) >= n:
                break
        return r.headers["x-tokenedge-stream"], events


def test_a_reader_gets_the_rest_of_an_answer_whose_generation_was_lost():
    """A client leaves after a few events and comes back 1.5 s later,
    within the grace period. Where the detached generation still runs
    (workerd), the reader follows it; where it went away with its instance
    (Spin drops an instance 1 s after its last request), the reader finds
    the record no longer written and finishes the answer itself by
    continuation. Either way: the whole answer, no gap, no duplicate, the
    same text as an uninterrupted run."""
    req = body(max_tokens=120, prompt="Count from 1 to 60, separated by commas.")
    with httpx.Client(timeout=120) as client:
        stream, events = leave_after(client, URL, req, 4)
        last = max(int(e["id"]) for e in events if "id" in e)
        before = text_of([e for e in events if "id" in e])
        time.sleep(1.5)
        started = time.monotonic()
        h = headers(**{"last-event-id": str(last)})
        with client.stream("GET", f"{URL}/v1/streams/{stream}", headers=h) as r:
            assert r.status_code == 200
            rest, ended = read(r, "identity")
        took = time.monotonic() - started
        assert ended, rest[-3:]
        assert not any(e.get("event") == "error" for e in rest), rest[-3:]
        done = [e for e in rest if e.get("event") == "done"][0]["data"]
        assert '"finish_reason":"cancelled"' not in done, done
        ids = [int(e["id"]) for e in rest if "id" in e]
        assert ids == sorted(set(ids)) and (not ids or ids[0] > last), ids
        got = before + text_of(rest)
        whole = uninterrupted(client, "identity", req)
        print(f"[{RUNTIME}] lost generation: the rest came in {took:.2f}s, "
              f"{len(got)} chars, same as an uninterrupted run: {got == whole}")
        assert got == whole, (got, whole)
        if RUNTIME == "workerd":
            # The generation went on after the Worker's request was gone:
            # the rest came at the generation's pace, not after a takeover's
            # 6 s wait for a stale record.
            assert took < 5, took


@pytest.mark.skipif(RUNTIME != "workerd" or not NOKV_URL, reason="the stream owner is a Workers binding")
def test_on_workers_the_stream_owner_keeps_the_record_without_kv():
    """The instance without a KV namespace still resumes: the record lives
    in the storage of the Durable Object that owns the stream, which also
    ran the generation after the client's request was gone."""
    req = body(max_tokens=60, prompt="Count from 1 to 40, separated by commas.")
    with httpx.Client(timeout=120) as client:
        stream, events = leave_after(client, NOKV_URL, req, 3)
        last = max(int(e["id"]) for e in events if "id" in e)
        time.sleep(1)
        h = headers(**{"last-event-id": str(last)})
        with client.stream("GET", f"{NOKV_URL}/v1/streams/{stream}", headers=h) as r:
            assert r.status_code == 200, r.read()
            rest, ended = read(r, "identity")
        assert ended and not any(e.get("event") == "error" for e in rest), rest[-3:]
        got = text_of([e for e in events if "id" in e]) + text_of(rest)
        assert got == uninterrupted(client, "identity", req, NOKV_URL)


def busy():
    return any(s["is_processing"] for s in httpx.get(f"{MODEL_URL}/slots", timeout=10).json())


def test_a_reader_that_leaves_too_lets_the_generation_stop():
    """The client leaves, a reader comes back for half a second and leaves
    too: its mark lapses (after the grace period, 2 s on the test
    instances), and the generation stops at the end of the next grace
    period, long before its 1,500 tokens."""
    deadline = time.monotonic() + 30
    while busy() and time.monotonic() < deadline:
        time.sleep(0.2)
    long = body(max_tokens=1500, prompt="Write a very long story about a lighthouse keeper.")
    with httpx.Client(timeout=60) as client:
        stream, events = leave_after(client, URL, long, 3)
        left_at = time.monotonic()
        time.sleep(0.3)
        h = headers(**{"last-event-id": str(max(int(e["id"]) for e in events if "id" in e))})
        with client.stream("GET", f"{URL}/v1/streams/{stream}", headers=h) as r:
            assert r.status_code == 200
            until = time.monotonic() + 0.5
            for _ in r.iter_raw():
                if time.monotonic() > until:
                    break
        while busy() and time.monotonic() - left_at < 15:
            time.sleep(0.1)
        stopped_after = time.monotonic() - left_at
    assert not busy(), "the model kept generating for nobody"
    assert stopped_after < 8, stopped_after
    print(f"[{RUNTIME}] a reader came and went: the model stopped {stopped_after:.2f}s after the client left")


def test_a_cancel_stops_the_generation_and_ends_its_readers():
    with httpx.Client(timeout=60) as client, httpx.Client(timeout=60) as other:
        h = headers(**{"cache-control": "no-store"})
        long = body(max_tokens=400, prompt="Write a long story about a lighthouse keeper.")
        with client.stream("POST", f"{URL}/v1/chat/completions", json=long, headers=h) as r:
            stream = r.headers["x-tokenedge-stream"]
            chunks = r.iter_raw()
            reader = Reader("identity")
            events = []
            while sum(1 for e in events if "id" in e) < 5:
                events += reader.feed(next(chunks))
            # Another key cannot cancel it.
            foreign = other.post(f"{URL}/v1/streams/{stream}/cancel", headers=headers(OTHER_KEY))
            assert foreign.status_code == 404
            assert foreign.json()["error"]["code"] == "stream_not_found"
            cancel = other.post(f"{URL}/v1/streams/{stream}/cancel", headers=headers())
            cancelled_at = time.monotonic()
            assert cancel.status_code == 202, cancel.text
            assert cancel.json()["status"] == "cancelling"
            # The attached reader gets the cancelled end.
            for chunk in chunks:
                events += reader.feed(chunk)
        ended_after = time.monotonic() - cancelled_at
        done = [e for e in events if e.get("event") == "done"]
        assert done and '"finish_reason":"cancelled"' in done[0]["data"], events[-3:]
        while time.monotonic() - cancelled_at < 10:
            slots = httpx.get(f"{MODEL_URL}/slots", timeout=10).json()
            if not any(s["is_processing"] for s in slots):
                break
            time.sleep(0.05)
        stopped_after = time.monotonic() - cancelled_at
        assert stopped_after < 1.5, f"the model kept generating {stopped_after:.2f}s"
        time.sleep(1)
        # A later read replays what was produced, and the cancelled end.
        with other.stream("GET", f"{URL}/v1/streams/{stream}", headers=headers()) as r:
            replay, ended = read(r, "identity")
        assert ended
        assert text_of(replay) == text_of(events)
        assert '"finish_reason":"cancelled"' in [e for e in replay if e.get("event") == "done"][0]["data"]
        again = other.post(f"{URL}/v1/streams/{stream}/cancel", headers=headers())
        assert again.status_code == 200 and again.json()["status"] == "cancelled"
        print(f"[{RUNTIME}] cancel: the reader ended {ended_after:.2f}s and the model stopped {stopped_after:.2f}s after it")


def test_unknown_foreign_and_bad_cursors_are_refused():
    with httpx.Client(timeout=60) as client:
        h = headers(**{"cache-control": "no-store"})
        with client.stream("POST", f"{URL}/v1/chat/completions", json=body(8), headers=h) as r:
            stream = r.headers["x-tokenedge-stream"]
            events, ended = read(r, "identity")
        assert ended
        last = max(int(e["id"]) for e in events if "id" in e)
        time.sleep(0.5)
        cases = [
            (f"/v1/streams/st_{'0' * 32}", headers(), 404, "stream_not_found"),
            ("/v1/streams/not-an-id", headers(), 404, "stream_not_found"),
            (f"/v1/streams/{stream}", headers(OTHER_KEY), 404, "stream_not_found"),
            (f"/v1/streams/{stream}?after=-1", headers(), 400, "invalid_request"),
            (f"/v1/streams/{stream}?after=abc", headers(), 400, "invalid_request"),
            (f"/v1/streams/{stream}?after=99999", headers(), 400, "invalid_request"),
        ]
        for path, h, status, code in cases:
            r = client.get(f"{URL}{path}", headers=h)
            assert r.status_code == status, (path, r.text)
            assert r.json()["error"]["code"] == code, (path, r.text)
        r = client.get(f"{URL}/v1/streams/{stream}", headers=headers(**{"last-event-id": str(last)}))
        assert r.status_code == 200
        assert "event: done" in r.text and "id:" not in r.text, r.text
