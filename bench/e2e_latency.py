"""TTFT and inter-token gaps, direct to the model server vs through tokenedge,
measured in one run with interleaved requests (same prompt, same settings).

  python bench/e2e_latency.py --direct http://127.0.0.1:8081 \
      --via http://127.0.0.1:8787 --key KEY --rounds 10 [--api responses]

`--api responses` asks the same question of `/v1/responses` (text arrives
as `response.output_text.delta` events).

Prints a Markdown table of medians; bench/e2e.sh starts the services and
runs it.
"""
import argparse
import json
import statistics
import time

import httpx

BODY = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Give me three tips for a rainy day."}],
    "max_tokens": 64,
    "temperature": 0,
    "stream": True,
}
# The same request to the Responses API.
RESPONSES_BODY = {
    "model": "smollm2",
    "input": "Give me three tips for a rainy day.",
    "max_output_tokens": 64,
    "temperature": 0,
    "stream": True,
}
API = {"path": "/v1/chat/completions", "body": BODY}


def has_text(event):
    if event.get("type") == "response.output_text.delta":
        return bool(event.get("delta"))
    return any((c.get("delta") or {}).get("content") for c in event.get("choices") or [])


def one(client, base, headers):
    start = time.perf_counter()
    arrivals = []
    with client.stream("POST", f"{base}{API['path']}", json=API["body"], headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if line.startswith("data: {") and has_text(json.loads(line[6:])):
                arrivals.append(time.perf_counter() - start)
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return arrivals[0], statistics.median(gaps), arrivals[-1], len(arrivals)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--direct", required=True)
    ap.add_argument("--via", required=True)
    ap.add_argument("--key", default="")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--label", default="workerd")
    ap.add_argument("--names", default="direct,via", help="what to call the two paths in the table")
    ap.add_argument("--prompt", default=None, help="another user message (e.g. the replaying proxy's marker)")
    ap.add_argument("--api", default="chat", choices=("chat", "responses"))
    args = ap.parse_args()
    if args.prompt:
        BODY["messages"] = [{"role": "user", "content": args.prompt}]
        RESPONSES_BODY["input"] = args.prompt
    if args.api == "responses":
        API.update(path="/v1/responses", body=RESPONSES_BODY)
    names = dict(zip(("direct", "via"), args.names.split(",")))
    # The live path: this deterministic request would otherwise be a cache hit.
    headers = {"Cache-Control": "no-store"}
    if args.key:
        headers["Authorization"] = f"Bearer {args.key}"
    results = {"direct": [], "via": []}
    with httpx.Client(timeout=120) as client:
        one(client, args.direct, headers)  # warm the prompt cache
        one(client, args.via, headers)
        for _ in range(args.rounds):
            results["direct"].append(one(client, args.direct, headers))
            results["via"].append(one(client, args.via, headers))

    def med(name, i):
        return statistics.median(r[i] for r in results[name]) * 1000

    print(f"| path ({args.label}, {args.api}, {args.rounds} rounds) | TTFT ms | median inter-token gap ms | last token ms | tokens |")
    print("|---|---|---|---|---|")
    for name in ("direct", "via"):
        print(f"| {names[name]} | {med(name, 0):.1f} | {med(name, 1):.2f} | {med(name, 2):.1f} | {statistics.median(r[3] for r in results[name]):.0f} |")
    print()
    print(f"{names['via']} adds TTFT: {med('via', 0) - med('direct', 0):+.1f} ms (x{med('via', 0) / med('direct', 0):.2f}); "
          f"added per-token gap: {med('via', 1) - med('direct', 1):+.2f} ms")


if __name__ == "__main__":
    main()
