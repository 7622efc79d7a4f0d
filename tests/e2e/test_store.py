"""End-to-end: a store without expiry of its own (Spin's) does not grow
without bound. Runs where the runtime lists its store's keys
(TOKENEDGE_KV_DUMP: the Spin test host's SPIN_HOST_KV_DUMP, on the instance
at TOKENEDGE_DEAD_URL, whose prefetch markers live 2 s). Workers KV expires
values itself, so there is nothing to see there."""

import os
import time
import uuid

import httpx
import pytest

DEAD_URL = os.environ["TOKENEDGE_DEAD_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
DUMP = os.environ.get("TOKENEDGE_KV_DUMP", "")

pytestmark = pytest.mark.skipif(not DUMP, reason="the runtime does not list its store's keys (Workers KV expires values itself)")


def prefetch_markers():
    with open(DUMP) as f:
        return [k for k in f.read().split("\n") if k.startswith("prefetch:")]


def prefetch(text):
    body = {"model": "m", "messages": [{"role": "user", "content": text}]}
    r = httpx.post(f"{DEAD_URL}/v1/prefetch", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30)
    assert r.status_code == 202, r.text


def wait_for(predicate, what, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(what)


def test_spin_store_shrinks_after_expiry():
    # Unique prefetches: each leaves a marker (2 s) nobody reads again.
    run = uuid.uuid4().hex
    before = len(prefetch_markers()) if os.path.exists(DUMP) else 0
    for i in range(6):
        prefetch(f"{run} {i}")
    wait_for(lambda: len(prefetch_markers()) >= before + 6, "the markers were never written")
    grown = len(prefetch_markers())
    time.sleep(2.5)
    # The next write of the same key holder sweeps every expired marker.
    prefetch(f"{run} last")
    wait_for(lambda: len(prefetch_markers()) == 1, f"the store did not shrink: {len(prefetch_markers())} markers (was {grown})")


WRITES = os.environ.get("TOKENEDGE_KV_WRITES", "")
URL = os.environ.get("TOKENEDGE_URL", "")


@pytest.mark.skipif(not WRITES, reason="the runtime does not log its store's writes")
def test_identical_requests_at_the_same_time_write_their_answer_once():
    """Two identical requests that overlap, served by one instance, store
    their answer once (`WriteOnce` is per instance: the host gives a busy
    instance a second request only once the first waits on I/O, so the
    second starts when the first has its response head)."""
    import concurrent.futures
    import threading

    started = threading.Event()

    body = {
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"Name a colour. ({uuid.uuid4().hex})"}],
        "max_tokens": 40,
        "temperature": 0,
        "stream": True,
    }

    def ask(i):
        if i == 1:
            assert started.wait(60)
        with httpx.stream("POST", f"{URL}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120) as r:
            assert r.status_code == 200
            started.set()
            text = b"".join(r.iter_bytes())
            assert text.endswith(b"data: [DONE]\n\n")
            return r.headers.get("x-cache")

    def cache_writes():
        if not os.path.exists(WRITES):
            return []
        with open(WRITES) as f:
            return [k for k in f.read().split("\n") if k.startswith("cache:")]

    before = len(cache_writes())
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        caches = list(pool.map(ask, range(2)))
    # Both missed (they ran together) and both generated...
    assert caches == ["miss", "miss"], caches
    time.sleep(0.5)
    # ...but the answer was written once.
    assert len(cache_writes()) - before == 1, cache_writes()[before:]
