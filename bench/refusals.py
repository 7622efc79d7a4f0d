"""How much a refused 50 MB upload costs the runtime: time to the answer,
how much of the body the client got to send, and the growth of the
runtime process's resident memory while it was being sent.

  python bench/refusals.py --url http://127.0.0.1:PORT --pid PID --key KEY
"""
import argparse
import socket
import statistics
import threading
import time

BODY = 50 * 1024 * 1024
PIECE = b" " * (256 * 1024)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def upload(url, head):
    """Sends `head`, then up to 50 MB of body until the server answers or
    closes; returns (seconds to the first answer byte, bytes sent, status line)."""
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head)
    answer = []
    started = time.monotonic()

    def read():
        try:
            data = sock.recv(4096)
            answer.append((time.monotonic() - started, data))
        except OSError as e:
            answer.append((time.monotonic() - started, repr(e).encode()))

    reader = threading.Thread(target=read)
    reader.start()
    sent = 0
    chunked = b"chunked" in head.lower()
    try:
        while sent < BODY and not answer:
            piece = (b"%x\r\n" % len(PIECE) + PIECE + b"\r\n") if chunked else PIECE
            sock.sendall(piece)
            sent += len(PIECE)
    except OSError:
        pass
    reader.join(30)
    sock.close()
    t, data = answer[0] if answer else (float("nan"), b"")
    return t, sent, data.split(b"\r\n", 1)[0].decode("latin-1")


def measure(url, pid, head):
    before = rss_kib(pid)
    peak = [before]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_kib(pid))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    t, sent, status = upload(url, head)
    time.sleep(0.3)
    done.set()
    sampler.join()
    return t, sent, status, (peak[0] - before) / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--label", default="runtime")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cases = {
        "no key, Content-Length 50 MB": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % BODY,
        "valid key, chunked 50 MB": b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer %s\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % args.key.encode(),
    }
    for name, head in cases.items():
        runs = [measure(args.url, args.pid, head) for _ in range(args.rounds)]
        statuses = sorted({r[2] for r in runs})
        t = statistics.median(r[0] for r in runs)
        sent = statistics.median(r[1] for r in runs)
        grew = [r[3] for r in runs]
        print(f"{args.label:8} | {name:30} | {', '.join(statuses):32} | answer after {t * 1000:6.1f} ms | "
              f"client sent {sent / 2**20:4.1f} MiB | runtime RSS peak +{statistics.median(grew):4.1f} MiB "
              f"(most +{max(grew):4.1f}) | median of {args.rounds}")


if __name__ == "__main__":
    main()
