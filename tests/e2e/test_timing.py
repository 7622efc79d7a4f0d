"""Timing shape through the runtime, against the model server directly in the
same run (interleaved requests, same prompt), and the figures for the
side-by-side report of both runtimes (scripts/test.sh prints it).

  TOKENEDGE_REPORT   if set, a JSON line with the medians is appended to it
"""
import json
import os
import statistics
import sys

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
from e2e_latency import one  # noqa: E402

URL = os.environ["TOKENEDGE_URL"]
KEY = os.environ["TOKENEDGE_KEY"]
MODEL_URL = os.environ["MODEL_URL"]
RUNTIME = os.environ.get("TOKENEDGE_RUNTIME", "runtime")
ROUNDS = 5


def test_first_token_long_before_last_and_report():
    # The live path: a deterministic request would otherwise be a cache hit.
    headers = {"Authorization": f"Bearer {KEY}", "Cache-Control": "no-store"}
    direct, via = [], []
    with httpx.Client(timeout=120) as client:
        one(client, MODEL_URL, {})  # warm the prompt cache
        one(client, URL, headers)
        for _ in range(ROUNDS):
            direct.append(one(client, MODEL_URL, {}))
            via.append(one(client, URL, headers))
    for ttft, _gap, last, tokens in via:
        assert tokens >= 10
        # Streamed, not buffered: the first token arrives long before the last.
        assert ttft < last / 3, (ttft, last)

    def med(rows, i):
        return round(statistics.median(r[i] for r in rows) * 1000, 2)

    row = {
        "runtime": RUNTIME,
        "rounds": ROUNDS,
        "ttft_ms": med(via, 0),
        "gap_ms": med(via, 1),
        "last_ms": med(via, 2),
        "direct_ttft_ms": med(direct, 0),
        "direct_gap_ms": med(direct, 1),
        "tokens": statistics.median(r[3] for r in via),
    }
    print(f"[{RUNTIME}] {json.dumps(row)}")
    # Through the function the per-token gap stays the model's own.
    assert row["gap_ms"] < row["direct_gap_ms"] * 2 + 5, row
    report = os.environ.get("TOKENEDGE_REPORT")
    if report:
        with open(report, "a") as f:
            f.write(json.dumps(row) + "\n")
