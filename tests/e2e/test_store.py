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
