"""Time to first token through the function with the real local model:
exact-cache hit, speculative-prefix hit and miss (the same requests, in the
same run), and a ~1500-token prompt cold vs shortly after /v1/prefetch.

  python bench/cache.py --via http://127.0.0.1:28787 --model-url http://127.0.0.1:28081 [--rounds 5]
"""
import argparse
import json
import statistics
import time
import uuid

import httpx


def ttft(via, body, headers=None):
    """(seconds to the first content, X-Cache, prompt tokens from the usage)."""
    start = time.monotonic()
    with httpx.stream("POST", f"{via}/v1/chat/completions", json=body, headers=headers or {}, timeout=300) as r:
        cache = r.headers.get("x-cache")
        lines = r.iter_lines()
        for line in lines:
            if line.startswith("data: {"):
                e = json.loads(line[6:])
                if any((c.get("delta") or {}).get("content") for c in e.get("choices") or []):
                    first = time.monotonic() - start
                    prompt = 0
                    for rest in lines:
                        if '"usage"' in rest and rest.startswith("data: {"):
                            prompt = (json.loads(rest[6:]).get("usage") or {}).get("prompt_tokens", 0)
                    return first, cache, prompt
    raise RuntimeError("no content")


def idle(model_url):
    deadline = time.monotonic() + 120
    time.sleep(0.3)
    while time.monotonic() < deadline:
        if not any(s.get("is_processing") for s in httpx.get(f"{model_url}/slots", timeout=10).json()):
            return
        time.sleep(0.1)


def med(xs):
    return statistics.median(xs) * 1000


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--via", required=True)
    p.add_argument("--model-url", required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--long-rounds", type=int, default=2)
    a = p.parse_args()

    miss, hit, pmiss, prefix = [], [], [], []
    for i in range(a.rounds):
        q = f"Give me three tips for sleeping well. (ref {uuid.uuid4().hex[:8]})"
        exact = {"model": "m", "messages": [{"role": "user", "content": q}], "max_tokens": 32, "stream": True, "temperature": 0}
        t, c, _ = ttft(a.via, exact); assert c == "miss", c; miss.append(t)
        time.sleep(0.5)
        t, c, _ = ttft(a.via, exact); assert c == "hit", c; hit.append(t)
        sampled = {**exact, "temperature": 0.8, "messages": [{"role": "user", "content": q + " Be creative."}]}
        on = {"X-Tokenedge-Prefix": "on"}
        t, c, _ = ttft(a.via, sampled, on); assert c == "miss", c; pmiss.append(t)
        time.sleep(0.5)
        t, c, _ = ttft(a.via, sampled, on); assert c == "prefix", c; prefix.append(t)
    print(f"TTFT over {a.rounds} rounds (median ms): miss {med(miss):.1f}, exact hit {med(hit):.1f} "
          f"({med(miss) / med(hit):.0f}x sooner); sampled miss {med(pmiss):.1f}, prefix hit {med(prefix):.1f} "
          f"({med(pmiss) / med(prefix):.0f}x sooner)")

    def long_convo(seed, question):
        facts = " ".join(f"Record {i}: parcel {seed}-{i} left depot {i % 9} on day {i % 31}." for i in range(70))
        return {"model": "m", "max_tokens": 8, "temperature": 0.7, "stream": True, "messages": [
            {"role": "system", "content": f"You answer questions about parcels. {facts}"},
            {"role": "user", "content": question}]}

    cold, warm, accepted = [], [], []
    for i in range(a.long_rounds):
        body = long_convo(uuid.uuid4().hex[:6], "Where did parcel 7 leave from?")
        idle(a.model_url)
        t, _, prompt_tokens = ttft(a.via, body)
        cold.append(t)
        body = long_convo(uuid.uuid4().hex[:6], "Where did parcel 7 leave from?")
        partial = {k: v for k, v in body.items() if k != "stream"}
        partial["messages"] = [*body["messages"][:-1], {"role": "user", "content": "Where did parc"}]
        start = time.monotonic()
        r = httpx.post(f"{a.via}/v1/prefetch", json=partial, timeout=30)
        accepted.append(time.monotonic() - start)
        assert r.status_code == 202
        idle(a.model_url)
        t, _, _ = ttft(a.via, body)
        warm.append(t)
    print(f"{prompt_tokens}-token prompt over {a.long_rounds} rounds (median ms): cold TTFT {med(cold):.0f}, "
          f"after /v1/prefetch {med(warm):.0f} ({med(cold) / med(warm):.0f}x sooner); prefetch answered in {med(accepted):.1f}")


main()
