"""The semantic cache's benchmark figures (bench/semantic.sh runs this).

  semantic.py curve CURVE_TSV --png OUT.png [--threshold T]
      From the session's pass over the labelled set at threshold 0.5
      (tests/semantic.rs, labelled_set_similarities): hit rate and false-hit
      rate at each threshold, the precision/recall curve as a PNG.

  semantic.py latency --url URL --key KEY --rounds N [--label NAME]
      Through a running tokenedge in front of the real model and embedding
      server: per round a new assistant (system prompt) and a labelled
      paraphrase pair (a, b): `a` without the semantic cache and `a` with it
      (a miss, which stores), each for a new assistant and in alternating
      order, then `b` with it. Prints TTFT p50/p95 of each,
      the lookup's own time on a miss (Server-Timing), and how many `b` hit.
"""
import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def curve(args):
    rows = []
    for line in Path(args.tsv).read_text().splitlines():
        label, found, sim = line.split("\t")
        rows.append((label == "same", found == "true", float(sim) if sim else None))
    same = sum(1 for s, _, _ in rows if s)
    diff = len(rows) - same
    thresholds = [round(0.80 + 0.005 * i, 3) for i in range(41)]
    table = []
    for t in thresholds:
        hits = sum(1 for s, f, x in rows if s and f and x >= t)
        false = sum(1 for s, f, x in rows if not s and f and x >= t)
        precision = hits / (hits + false) if hits + false else 1.0
        table.append((t, hits / same, false / diff, precision, hits, false))
    print(f"labelled pairs: {same} paraphrases, {diff} near-misses")
    print("| threshold | hit rate (recall) | false-hit rate | precision |")
    print("|---|---|---|---|")
    for t, recall, fr, precision, hits, false in table:
        if abs(t * 100 - round(t * 100)) < 1e-9 and t * 100 % 2 == 0 or t == args.threshold:
            mark = " (default)" if t == args.threshold else ""
            print(f"| {t:.2f}{mark} | {recall:.3f} ({hits}/{same}) | {fr:.3f} ({false}/{diff}) | {precision:.3f} |")
    alone = cosine_alone(args.vectors, thresholds) if args.vectors else None
    if alone:
        print("\nThe embedding alone (cosine of the recorded vectors, no wording check, no buckets):")
        print("| threshold | hit rate | false-hit rate |")
        print("|---|---|---|")
        for t, recall, fr in alone:
            if abs(t * 100 - round(t * 100)) < 1e-9 and round(t * 100) % 2 == 0:
                print(f"| {t:.2f} | {recall:.3f} | {fr:.3f} |")
    if args.png:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot([r[1] for r in table], [r[3] for r in table], marker=".",
                 label="tokenedge (with the wording check)")
        for t, recall, _, precision, _, _ in table:
            if t in (0.85, 0.9, 0.95):
                ax1.annotate(f"{t:.2f}", (recall, precision), textcoords="offset points", xytext=(4, -10))
        if alone:
            # The set has as many near-misses as paraphrases.
            precision = [r[1] / (r[1] + r[2]) if r[1] + r[2] else 1.0 for r in alone]
            ax1.plot([r[1] for r in alone], precision, linestyle="--", color="grey",
                     label="embedding alone")
            ax1.legend()
        ax1.set_xlabel("recall (hit rate on paraphrases)")
        ax1.set_ylabel("precision")
        ax1.set_title("precision / recall over thresholds")
        ax1.grid(True, alpha=0.3)
        ax2.plot(thresholds, [r[1] for r in table], label="hit rate (paraphrases)")
        ax2.plot(thresholds, [r[2] for r in table], label="false-hit rate (near-misses)")
        ax2.axvline(args.threshold, color="grey", linestyle="--", label=f"default {args.threshold}")
        ax2.set_xlabel("SEMANTIC_THRESHOLD")
        ax2.set_title("rates by threshold")
        ax2.legend()
        ax2.grid(True, alpha=0.3)
        fig.suptitle("tokenedge semantic cache, labelled set (tests/data/semantic_pairs.tsv), multilingual-e5-small")
        fig.tight_layout()
        fig.savefig(args.png, dpi=80)
        print(f"plot: {args.png}")


def cosine_alone(path, thresholds):
    """Hit and false-hit rates of the cosine of the recorded (int8) vectors
    alone, for comparison: what a cache without the wording check gets."""
    import base64
    vec = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            q, b64 = line.split("\t")
            vec[q] = [b - 256 if b > 127 else b for b in base64.b64decode(b64)]

    def cos(a, b):
        x, y = vec[a], vec[b]
        dot = sum(i * j for i, j in zip(x, y))
        return dot / (sum(i * i for i in x) ** 0.5 * sum(j * j for j in y) ** 0.5)
    rows = []
    for line in (ROOT / "tests/data/semantic_pairs.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            _, label, a, b = line.split("\t")
            rows.append((label == "same", cos(a, b)))
    same = sum(1 for s, _ in rows if s)
    diff = len(rows) - same
    return [(t, sum(1 for s, c in rows if s and c >= t) / same,
             sum(1 for s, c in rows if not s and c >= t) / diff) for t in thresholds]


def pairs():
    out = []
    for line in (ROOT / "tests/data/semantic_pairs.tsv").read_text().splitlines():
        if line and not line.startswith("#"):
            _, label, a, b = line.split("\t")
            if label == "same":
                out.append((a, b))
    return out


def ask(client, url, key, system, question, semantic):
    """TTFT (ms), X-Cache, the lookup's Server-Timing ms, the text."""
    body = {"model": "smollm2", "stream": True, "max_tokens": 16, "temperature": 0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]}
    headers = {"Authorization": f"Bearer {key}"}
    if semantic:
        headers["X-Tokenedge-Cache"] = "semantic"
    start = time.perf_counter()
    ttft, text = None, ""
    with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers, timeout=120) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if line.startswith("data: {"):
                delta = ((json.loads(line[6:]).get("choices") or [{}])[0].get("delta") or {}).get("content")
                if delta:
                    ttft = ttft or (time.perf_counter() - start) * 1000
                    text += delta
        timing = r.headers.get("server-timing", "")
        lookup = None
        for part in timing.split(","):
            if part.strip().startswith("cache;"):
                lookup = float(part.split("dur=")[1])
        return ttft, r.headers.get("x-cache"), lookup, text


def pct(xs, p):
    xs = sorted(x for x in xs if x is not None)
    return xs[min(len(xs) - 1, int(round(p * (len(xs) - 1))))] if xs else float("nan")


def latency(args):
    import httpx
    plain, miss, hit, lookups = [], [], [], []
    hits = 0
    ps = pairs()
    with httpx.Client() as client:
        for i in range(args.rounds):
            a, b = ps[i % len(ps)]
            # Each request its own assistant, named first, so that neither
            # finds the other's prompt in the model's prefix cache; which of
            # the two goes first alternates.
            shop = lambda: f"Shop {uuid.uuid4().hex[:8]}: you are its help desk. Answer briefly."
            plain_system, system = shop(), shop()
            first = [("plain", plain_system, False), ("miss", system, True)]
            for kind, sys_prompt, semantic in (first if i % 2 == 0 else first[::-1]):
                t, xc, lk, _ = ask(client, args.url, args.key, sys_prompt, a, semantic)
                if kind == "plain":
                    plain.append(t)
                else:
                    assert xc == "miss", xc
                    miss.append(t)
                    lookups.append(lk)
            time.sleep(0.5)  # the miss's writes run after its response
            t, xc, _, _ = ask(client, args.url, args.key, system, b, True)
            if xc == "semantic":
                hits += 1
                hit.append(t)
    print(f"{args.label}: {args.rounds} rounds, {hits} paraphrases hit")
    print("| | TTFT p50 (ms) | TTFT p95 (ms) |")
    print("|---|---|---|")
    for name, xs in (("no semantic cache", plain), ("semantic miss", miss), ("semantic hit", hit)):
        print(f"| {name} | {pct(xs, 0.5):.1f} | {pct(xs, 0.95):.1f} |")
    print(f"| the lookup on a miss (Server-Timing) | {pct(lookups, 0.5):.1f} | {pct(lookups, 0.95):.1f} |")
    if plain and miss:
        d = [m - p for m, p in zip(miss, plain)]
        print(f"| miss − no cache, same round | {statistics.median(d):+.1f} | {pct(d, 0.95):+.1f} |")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve")
    c.add_argument("tsv")
    c.add_argument("--png")
    c.add_argument("--vectors", help="the vector table, to plot the embedding alone")
    c.add_argument("--threshold", type=float, default=0.90)
    l = sub.add_parser("latency")
    l.add_argument("--url", required=True)
    l.add_argument("--key", default="bench-key")
    l.add_argument("--rounds", type=int, default=40)
    l.add_argument("--label", default="tokenedge")
    args = p.parse_args()
    {"curve": curve, "latency": latency}[args.cmd](args)


if __name__ == "__main__":
    main()
