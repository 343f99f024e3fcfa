"""Throughput, latency and memory of `rwkv1c serve` under concurrent clients, over loopback HTTP.

    python bench/serve.py --size 1.5b --out bench/results/serve.json                  # GPU, the full run
    python bench/serve.py --tiny --clients 1 4 --rounds 2 --requests 60 --memory-warmup 20 \\
        --max-tokens 16 --out /tmp/serve.json                                          # CPU smoke run

The server (model on random weights with real RWKV-7 shapes, or --model FILE.pth; --adapters N random LoRA
adapters attached unmerged, requests spread over the base and them) runs in a child process, so the
load generator never shares its interpreter. The load generator is a small asyncio HTTP/1.1 client: each
of C clients holds one keep-alive connection and sends its requests one after another.

- For each C in --clients: C x --rounds /v1/completions requests (--prompt-tokens of varied text,
  --max-tokens new tokens, the server's default sampling). Reported: requests/s, completion tokens/s,
  latency p50 / p99 / mean of whole requests, and with --stream the time to the first token.
- Memory: --requests requests at the largest C; the server's RSS (and CUDA memory allocated / reserved
  on a GPU) after the first --memory-warmup of them and after all, which should be equal but for the
  prefix cache, which fills up to its budget (--prefix-cache-mb, reported apart): a request leaves
  nothing else behind.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

WORDS = ["Процедура", "Функция", "Если", "Тогда", "Иначе", "КонецЕсли", "Для", "Каждого", "Из", "Цикл", "Запрос",
         "Выборка", "Документ", "Справочник"]  # fmt: skip


# ---------------------------------------------------------------------------------------------- the server


def tiny_model() -> Any:
    """A 2-layer, width-128 RWKV7 (vocab 65536) with random weights, fp32 on the CPU."""
    import torch

    from rwkv1c.model.config import ModelConfig
    from rwkv1c.model.rwkv7 import RWKV7

    torch.manual_seed(0)
    model = RWKV7(ModelConfig(n_layer=2, n_embd=128))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.normal_(0, 0.1)
            elif p.dim() == 1 or name.split(".")[-2].startswith("ln"):
                p.normal_(1, 0.2)
            elif p.dim() == 2:
                p.normal_(0, (p.shape[1] if name.endswith(".weight") else p.shape[0]) ** -0.5)
            else:
                p.uniform_(0, 1)
    return model.eval()


def build_engine(args: argparse.Namespace) -> Any:
    import torch

    from rwkv1c.infer.engine import Engine
    from rwkv1c.infer.multi_lora import attach
    from rwkv1c.model.loader import load_model
    from rwkv1c.model.tokenizer import get_tokenizer

    device = "cuda" if torch.cuda.is_available() and not args.tiny else "cpu"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    if args.tiny:
        model = tiny_model()
    elif args.model:
        model = load_model(args.model, device=device, dtype=dtype)
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        from decode import random_model  # the same random weights as the decode benchmark

        model = random_model(args.size, dtype, device)
    rows = None
    if args.adapters:
        g = torch.Generator().manual_seed(1)
        loras = []
        for i in range(args.adapters):
            tensors = {}
            for b, blk in enumerate(model.blocks):
                for part in ("att.receptance", "att.key", "att.value", "att.output", "ffn.key", "ffn.value"):
                    lin = blk.get_submodule(part)
                    tensors[f"blocks.{b}.{part}.lora_A"] = torch.randn(args.rank, lin.in_features, generator=g) * 0.01
                    tensors[f"blocks.{b}.{part}.lora_B"] = torch.randn(lin.out_features, args.rank, generator=g) * 0.01
            loras.append((f"adapter-{i + 1}", 2.0, tensors))
        rows = attach(model, loras)
    return Engine(model, get_tokenizer(), max_batch=args.max_batch, prefix_cache_mb=args.prefix_cache_mb, adapters=rows)


def memory(engine: Any) -> dict[str, float]:
    import gc

    import psutil
    import torch

    gc.collect()
    # the prefix cache grows up to its budget by design (256 MiB): reported so that growth can be told apart
    out = {"rss_mib": psutil.Process().memory_info().rss / 2**20, "prefix_cache_mib": engine.cache.bytes / 2**20}
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
        out["cuda_allocated_mib"] = torch.cuda.memory_allocated() / 2**20
        out["cuda_reserved_mib"] = torch.cuda.memory_reserved() / 2**20
    return out


def serve_child(args: argparse.Namespace, conn: Any) -> None:
    """The server process: build, serve on a free loopback port, answer "memory" / "stop" on the pipe."""
    from rwkv1c.infer.engine import describe
    from rwkv1c.infer.server import Server, ServerSettings

    engine = build_engine(args)
    settings = ServerSettings(max_queue=100_000, request_timeout=60)
    server = Server(engine, "bench", port=0, quiet=True, max_prompt_tokens=1 << 20, settings=settings)
    _, port = server.start()
    conn.send({"port": port, "engine": describe(engine), "models": server.app.listed})
    while True:
        command = conn.recv()
        if command == "memory":
            conn.send(memory(engine))
        else:
            server.stop()
            conn.send("stopped")
            return


# ---------------------------------------------------------------------------------------------- the clients


class Client:
    """One keep-alive HTTP/1.1 connection that posts JSON and reads the answer (whole, or chunked SSE)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: dict[str, Any]) -> tuple[int, bytes, float | None]:
        """(status, body, seconds to the first data chunk for a stream)."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        assert self.reader is not None
        data = json.dumps(body).encode()
        start = time.perf_counter()
        self.writer.write(b"POST %s HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(data), data))  # fmt: skip
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
        status = int(head.split()[1])
        if "transfer-encoding: chunked" in head:
            parts, first = [], None
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                first = first if first is not None else time.perf_counter() - start
                parts.append(chunk[:-2])
            return status, b"".join(parts), first
        length = int(head.split("content-length:")[1].split("\r\n")[0])
        return status, await self.reader.readexactly(length), None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def prompt(i: int, tokens: int) -> str:
    """Varied text of about `tokens` tokens (no two requests share a prefix longer than a word)."""
    rng = __import__("random").Random(i)
    return f"{i} " + " ".join(rng.choice(WORDS) for _ in range(max(1, tokens - 1)))


async def load(port: int, models: list[str], clients: int, total: int, args: argparse.Namespace,
               on_done: Any = None) -> dict[str, Any]:  # fmt: skip
    """`total` requests from `clients` concurrent clients; latencies and counts."""
    counter = itertools.count()
    latencies: list[float] = []
    firsts: list[float] = []
    tokens = [0]
    errors: list[str] = []

    async def run_client() -> None:
        client = Client(port)
        try:
            while (i := next(counter)) < total:
                body: dict[str, Any] = {"model": models[i % len(models)], "prompt": prompt(i, args.prompt_tokens),
                                        "max_tokens": args.max_tokens, "seed": i}  # fmt: skip
                if args.stream:
                    body |= {"stream": True, "stream_options": {"include_usage": True}}
                start = time.perf_counter()
                status, data, first = await client.post("/v1/completions", body)
                latencies.append(time.perf_counter() - start)
                if status != 200:
                    errors.append(f"{status}: {data[:200]!r}")
                    continue
                if args.stream:
                    firsts.append(first or 0.0)
                    usage = [json.loads(line[6:]) for line in data.decode().split("\n\n") if '"usage"' in line]
                    tokens[0] += usage[-1]["usage"]["completion_tokens"] if usage else 0
                else:
                    tokens[0] += json.loads(data)["usage"]["completion_tokens"]
                if on_done is not None:
                    await on_done(len(latencies))
        finally:
            client.close()

    start = time.perf_counter()
    await asyncio.gather(*(run_client() for _ in range(clients)))
    wall = time.perf_counter() - start
    out: dict[str, Any] = {
        "clients": clients, "requests": len(latencies), "errors": len(errors), "wall_s": wall,
        "requests_per_s": len(latencies) / wall, "completion_tokens_per_s": tokens[0] / wall,
        "latency_s": percentiles(latencies),
    }  # fmt: skip
    if firsts:
        out["first_token_s"] = percentiles(firsts)
    if errors:
        out["first_errors"] = errors[:3]
    return out


def percentiles(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    pick = lambda q: s[min(len(s) - 1, int(q * len(s)))]
    return {"p50": pick(0.5), "p99": pick(0.99), "mean": statistics.fmean(s)} if s else {}


# ---------------------------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="a 2-layer random model on the CPU (smoke run)")
    ap.add_argument("--size", default="1.5b", help="random weights with these shapes (bench/decode.py's sizes)")
    ap.add_argument("--model", type=Path, help="a real .pth instead of random weights")
    ap.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default="fp16", help="weights on the GPU")
    ap.add_argument("--adapters", type=int, default=0, help="random LoRA adapters attached unmerged (multi-LoRA)")
    ap.add_argument("--rank", type=int, default=16, help="their rank")
    ap.add_argument("--max-batch", type=int, default=64, help="the engine's rows")
    ap.add_argument("--prefix-cache-mb", type=float, default=256, help="the engine's prefix cache (as serve's)")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64], help="concurrent clients per run")
    ap.add_argument("--rounds", type=int, default=4, help="requests per client in each throughput run")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="about this many prompt tokens a request")
    ap.add_argument("--max-tokens", type=int, default=128, help="new tokens a request")
    ap.add_argument("--stream", action="store_true", help="stream the answers (measures time to first token)")
    ap.add_argument("--requests", type=int, default=10_000, help="requests of the memory run")
    ap.add_argument("--memory-warmup", type=int, default=100, help="memory is read after this many, then at the end")
    ap.add_argument("--out", type=Path, required=True, help="results JSON")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=serve_child, args=(args, child), daemon=True)
    proc.start()
    info = parent.recv()
    print(f"server: {info['engine']}; models {info['models']}", file=sys.stderr)
    result: dict[str, Any] = {"engine": info["engine"], "platform": platform.platform(), "args": {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "runs": []}  # fmt: skip
    try:
        for c in args.clients:
            run = asyncio.run(load(info["port"], info["models"], c, c * args.rounds, args))
            result["runs"].append(run)
            print(
                f"clients {c}: {run['requests_per_s']:.2f} req/s, {run['completion_tokens_per_s']:.0f} tok/s, "
                f"p50 {run['latency_s']['p50']:.3f} s, p99 {run['latency_s']['p99']:.3f} s",
                file=sys.stderr,
            )
        result["memory"] = memory_run(parent, info, args)
        print(f"memory: {json.dumps(result['memory'])}", file=sys.stderr)
    finally:
        parent.send("stop")
        parent.recv()
        proc.join(timeout=60)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return 1 if any(r["errors"] for r in result["runs"]) else 0


def memory_run(pipe: Any, info: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """--requests requests at the largest concurrency; the server's memory after --memory-warmup and at the end."""
    readings: dict[str, Any] = {}

    async def on_done(n: int) -> None:
        if n == args.memory_warmup:
            pipe.send("memory")
            readings["after_warmup"] = await asyncio.get_running_loop().run_in_executor(None, pipe.recv)

    run = asyncio.run(load(info["port"], info["models"], max(args.clients), args.requests, args, on_done))
    pipe.send("memory")
    readings["after_all"] = pipe.recv()
    readings["requests"] = run["requests"]
    readings["warmup_requests"] = args.memory_warmup
    readings["errors"] = run["errors"]
    readings["growth_mib"] = {k: readings["after_all"][k] - readings["after_warmup"][k] for k in readings["after_all"]}
    return readings


if __name__ == "__main__":
    raise SystemExit(main())
