"""What asking the per-key limits record adds to a request: the same small
request, alternately to a deployment without limits and to one with them
set high enough never to refuse, timed to the whole answer (the upstream
is a closed port, so each answer is an immediate 502 and the difference
is the record's round trip).

  python bench/limits_cost.py --plain URL --limited URL --key KEY [--rounds N]
"""
import argparse
import statistics
import time

import httpx

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--plain", required=True)
    ap.add_argument("--limited", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--label", default="runtime")
    ap.add_argument("--rounds", type=int, default=200)
    args = ap.parse_args()
    times = {"plain": [], "limited": []}
    headers = {"Authorization": f"Bearer {args.key}"}
    with httpx.Client(timeout=30) as client:
        for i in range(args.rounds + 10):
            for name in ("plain", "limited") if i % 2 else ("limited", "plain"):
                url = getattr(args, name)
                start = time.perf_counter()
                r = client.post(f"{url}/v1/chat/completions", json=BODY, headers=headers)
                elapsed = time.perf_counter() - start
                assert r.status_code == 502, (name, r.status_code, r.text)
                if i >= 10:  # warm-up
                    times[name].append(elapsed * 1000)
    plain, limited = (statistics.median(times[n]) for n in ("plain", "limited"))
    print(f"{args.label:8} | no limits {plain:6.2f} ms | limits on {limited:6.2f} ms | "
          f"record round trip +{limited - plain:5.2f} ms | median of {args.rounds}")


if __name__ == "__main__":
    main()
