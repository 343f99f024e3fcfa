"""`rwkv1c serve`: serve a model over an OpenAI-compatible HTTP API (`rwkv1c.infer.server`)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

from rwkv1c.errors import UserError
from rwkv1c.model.loader import Device, DType


def serve(
    *,
    model: Path,
    adapter: Path | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    max_batch: int = 32,
    max_tokens: int = 256,
    max_prompt_tokens: int = 16384,
    device: Device = "auto",
    dtype: DType = "auto",
) -> int:
    """Serve the model over an OpenAI-compatible HTTP API (for editor plugins and scripts).

    /v1/models, /v1/completions and /v1/chat/completions, with streaming (SSE), stop strings, n and
    usage counts. Concurrent requests are decoded together in the same batch. Listens on loopback
    only unless --host says otherwise; use --api-key whenever other machines can reach it.

    Args:
        model: the .pth checkpoint (a base or a merged model).
        adapter: an adapter folder (from `rwkv1c train`) applied on top of --model, unmerged.
        host: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: the TCP port (0 picks a free one).
        api_key: require "Authorization: Bearer KEY" on every /v1 request.
        model_name: the model id clients send (default: the adapter's run name or the checkpoint's stem).
        max_batch: the most sequences decoded together.
        max_tokens: the completion length when a request does not set max_tokens.
        max_prompt_tokens: longer prompts are refused with a 400 error.
        device: where to run: auto (CUDA when available), cpu or cuda.
        dtype: weights' precision: auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.
    """
    problems = []
    if not 0 <= port <= 65535:
        problems.append(f"--port must be in 0..65535, got {port}")
    if max_batch < 1:
        problems.append(f"--max-batch must be >= 1, got {max_batch}")
    if max_tokens < 1 or max_prompt_tokens < 1:
        problems.append("--max-tokens and --max-prompt-tokens must be >= 1")
    if problems:
        raise UserError("; ".join(problems))
    from rwkv1c.infer.engine import describe, load_engine
    from rwkv1c.infer.server import Server, model_name_for

    engine = load_engine(model, adapter, device=device, dtype=dtype, max_batch=max_batch)
    print(describe(engine), file=sys.stderr)
    name = model_name or model_name_for(model, adapter)
    try:
        server = Server(engine, name, host=host, port=port, api_key=api_key, max_prompt_tokens=max_prompt_tokens,
                        default_max_tokens=max_tokens)  # fmt: skip
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                        hint="pick another --port, or stop the program that uses it") from None  # fmt: skip
    bound_host, bound_port = server.start()
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print("rwkv1c serve: warning: listening beyond this machine without --api-key", file=sys.stderr)
    print(f"rwkv1c serve: model '{name}' at http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)", file=sys.stderr)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("rwkv1c serve: stopping", file=sys.stderr)
    finally:
        server.stop()
    return 0
