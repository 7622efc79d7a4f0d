"""Records the embedding of every question in tests/data/semantic_pairs.tsv
from a running OpenAI-compatible embeddings server, quantised to one signed
byte per dimension, into tests/data/semantic_vectors.tsv: the scripted
embedding table tests/semantic.rs answers the session's embedding calls
from.

    python bench/semantic_vectors.py http://127.0.0.1:18090 [--model M] [--out FILE]

Columns: the question, then base64 of its int8 values (each value scaled so
the largest is ±127, as the core quantises it).
"""
import argparse
import base64
import json
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAIRS = ROOT / "tests/data/semantic_pairs.tsv"
OUT = ROOT / "tests/data/semantic_vectors.tsv"


def questions():
    seen = []
    for line in PAIRS.read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        _, _, a, b = line.split("\t")
        for q in (a, b):
            if q not in seen:
                seen.append(q)
    return seen


def embed(url, model, batch):
    body = json.dumps({"model": model, "input": batch}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/v1/embeddings", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return [d["embedding"] for d in json.load(r)["data"]]


def quantise(v):
    top = max(abs(x) for x in v) or 1.0
    return bytes((round(x * 127 / top) & 0xFF) for x in v)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("--model", default="multilingual-e5-small")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args()
    url, model, out = args.url, args.model, Path(args.out)
    qs = questions()
    lines = ["# question\tbase64(int8 per dimension); written by bench/semantic_vectors.py"]
    for i in range(0, len(qs), 32):
        batch = qs[i:i + 32]
        for q, v in zip(batch, embed(url, model, batch)):
            lines.append(q + "\t" + base64.b64encode(quantise(v)).decode())
    out.write_text("\n".join(lines) + "\n")
    print(f"{len(qs)} questions -> {out}")


if __name__ == "__main__":
    main()
