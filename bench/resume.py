"""Resume trials against one running instance behind the replaying proxy
(bench/resume.sh starts them): each trial streams the recorded real stream
(tests/vectors/llamacpp_chat.sse, replayed by tests/e2e/cut_proxy.py),
drops the connection at a random byte, reattaches with the last whole id,
and repeats until the end. Checks every assembled text against the vector
and prints one JSON line: trials, resumes, time from reattach to the first
replayed byte and to the first live event (p50/p95), wire bytes of a resume
read to its end, and generations lost (an error event instead of the rest).

The first read of a resume carries what the record held (the replay; the
core feeds a record's events to the re-streamer at once); an event that
arrives in a later read was written after the reader attached. "First live
event" is the first of those, on resumes of a stream still under way.

  python bench/resume.py --url http://127.0.0.1:18799 --trials 500 --coding gzip --label spin
"""

import argparse
import json
import os
import random
import statistics
import sys
import time

import httpx

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "e2e"))
from sse_reader import Reader, text_of, vector_text  # noqa: E402


def read(resp, coding, cut_at, started):
    """Events until the end (or an error event) or `cut_at` wire bytes;
    whether it ended, the times after `started` to the first byte and to
    the first event that came in a later read, and the wire bytes read."""
    reader, events, seen, first, live = Reader(coding), [], 0, None, None
    for chunk in resp.iter_raw():
        now = time.perf_counter() - started
        if first is None:
            first = now
        cut = seen + len(chunk) > cut_at
        if cut:
            chunk = chunk[: cut_at - seen]
        new = reader.feed(chunk)
        if live is None and seen > 0 and any("id" in e for e in new):
            live = now
        events += new
        if cut:
            return events, False, first, live, cut_at
        seen += len(chunk)
        if any(e.get("event") in ("done", "error") for e in events):
            return events, any(e.get("event") == "done" for e in events), first, live, seen
    return events, False, first, live, seen


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--key", default="bench-key")
    p.add_argument("--trials", type=int, default=500)
    p.add_argument("--coding", default="identity")
    p.add_argument("--label", default="")
    p.add_argument("--slow", action="store_true", help="the proxy's slow replay (25 ms per event)")
    a = p.parse_args()
    whole = vector_text()
    rng = random.Random(f"{a.label}-{a.coding}")
    base = {"authorization": f"Bearer {a.key}", "x-tokenedge-format": "compact", "accept-encoding": a.coding}
    marker = "replay-vector-slow" if a.slow else "replay-vector"
    body = {"model": "m", "messages": [{"role": "user", "content": f"{marker}: bench"}], "stream": True}
    firsts, lives, resumed_bytes, resumes, lost = [], [], [], 0, 0
    with httpx.Client(timeout=60) as client:
        for trial in range(a.trials):
            h = {**base, "cache-control": "no-store"}
            with client.stream("POST", f"{a.url}/v1/chat/completions", json=body, headers=h) as r:
                stream = r.headers["x-tokenedge-stream"]
                events, ended, _, _, _ = read(r, a.coding, rng.randint(1, 800), time.perf_counter())
            got, last = [], 0
            while True:
                for e in events:
                    if "id" in e:
                        assert int(e["id"]) > last, f"trial {trial}: event {e['id']} again"
                        last = int(e["id"])
                got += events
                if any(e.get("event") == "error" for e in events):
                    # The generation was lost (its instance went away): the
                    # reader is told so, explicitly.
                    lost += 1
                    break
                if ended:
                    break
                resumes += 1
                h = {**base, "last-event-id": str(last)}
                started = time.perf_counter()
                with client.stream("GET", f"{a.url}/v1/streams/{stream}", headers=h) as r:
                    assert r.status_code == 200, r.read()
                    events, ended, first, live, wire = read(r, a.coding, rng.randint(1, 1200), started)
                firsts.append(first * 1000)
                if live is not None:
                    lives.append(live * 1000)
                if ended:
                    # Read to the end: every byte the resume sent.
                    resumed_bytes.append(wire)
            if ended and text_of(got) != whole:
                print(f"trial {trial}: the assembled text differs", file=sys.stderr)
                sys.exit(1)
    def p50_p95(values):
        if len(values) < 2:
            return None
        return {"p50": round(statistics.median(values), 2), "p95": round(statistics.quantiles(values, n=20)[18], 2), "n": len(values)}

    print(json.dumps({
        "label": a.label,
        "coding": a.coding,
        "replay_ms_per_event": 25 if a.slow else 5,
        "trials": a.trials,
        "resumes": resumes,
        "reattach_to_first_byte_ms": p50_p95(firsts),
        "reattach_to_first_live_event_ms": p50_p95(lives),
        "wire_bytes_per_resume_to_the_end": round(statistics.mean(resumed_bytes)) if resumed_bytes else None,
        "lost_with_an_error_event": lost,
        "every_finished_text_whole": True,
    }))


if __name__ == "__main__":
    main()
