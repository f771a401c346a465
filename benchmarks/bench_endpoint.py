"""Requests in flight, 1 against 8, through our OpenAI-compatible client, side by side.

    python -m benchmarks.bench_endpoint                                  # a local server that serves in parallel
    python -m benchmarks.bench_endpoint --base-url http://127.0.0.1:8080/v1 --model NAME   # your server
    python -m benchmarks.bench_endpoint --managed             # the managed llama-server, tiny model, 8 slots

Without --base-url, a local HTTP server on 127.0.0.1 answers every request after a fixed latency, in parallel,
like a vLLM or `llama-server --parallel N` fleet whose batch is not full: the ratio then measures our client's
concurrency alone. Against a real server it measures what that server's parallelism gives; --managed starts the
one stargate-lite manages (backend llama-server) on the tiny model with 8 slots, as a run would.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def parallel_server(latency: float) -> tuple[ThreadingHTTPServer, str]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            time.sleep(latency)
            reply = json.dumps({
                "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "I like quiet mornings."}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
            }).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default=None)
    parser.add_argument("--model", default="m")
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--latency", type=float, default=0.2, help="the local server's seconds per request")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--managed", action="store_true", help="start a managed llama-server (tiny model, 8 slots)")
    a = parser.parse_args()

    from stargate_lite.engines.chat_models import OpenAIChat, Sampling
    from stargate_lite.recipe import ChatModelConfig

    managed = None
    if a.managed:
        import tempfile

        from stargate_lite.engines.chat_models import ChatModels
        from stargate_lite.recipe import load_recipe

        config = load_recipe("tiny").chat_models["smollm2"].model_copy(update={"backend": "llama-server", "slots": 8})
        managed = ChatModels({"smollm2": config}, Path(tempfile.mkdtemp()))
        a.base_url = managed.get("smollm2").server.url
    server, url = (None, a.base_url) if a.base_url else parallel_server(a.latency)
    conversations = [[{"role": "user", "content": f"Question {i}: what do you do on weekends?"}]
                     for i in range(a.requests)]
    results = {}
    for in_flight in (1, 8):
        chat = OpenAIChat("bench", ChatModelConfig(backend="openai", model=a.model, base_url=url,
                                                   max_concurrency=in_flight))
        start = time.perf_counter()
        texts = chat.complete_each(conversations, Sampling(a.max_tokens))
        seconds = time.perf_counter() - start
        assert all(isinstance(t, str) for t in texts), "some requests failed"
        results[in_flight] = seconds
    if server:
        server.shutdown()
    if managed:
        managed.close()
    where = "the managed llama-server (tiny model, 8 slots)" if managed else a.base_url or f"a local parallel server ({a.latency * 1000:.0f} ms per request)"
    print(f"endpoint benchmark: {a.requests} chat requests against {where}")
    print(f"{'in flight':>9} {'seconds':>8} {'requests/s':>11}")
    for n, seconds in results.items():
        print(f"{n:9d} {seconds:8.2f} {a.requests / seconds:11.1f}")
    print(f"ratio 8 / 1 in flight: {results[1] / results[8]:.2f}x throughput")


if __name__ == "__main__":
    main()
