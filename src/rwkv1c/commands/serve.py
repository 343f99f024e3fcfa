"""`rwkv1c serve`: serve a model over an OpenAI-compatible HTTP API (`rwkv1c.infer.server`)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Literal

from rwkv1c.errors import UserError, raise_all
from rwkv1c.model.loader import Device, DType

if TYPE_CHECKING:
    from rwkv1c.config import Quant
    from rwkv1c.infer.api import Limits
    from rwkv1c.infer.server import Server, ServerSettings


def serve(
    *,
    model: Path,
    adapter: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    api_key: str | None = None,
    model_name: str | None = None,
    max_batch: int = 32,
    max_tokens: int = 256,
    max_tokens_cap: int = 8192,
    max_prompt_tokens: int = 16384,
    max_queue: int = 256,
    prefix_cache_mb: float = 256,
    request_timeout: float = 30.0,
    keep_alive: float = 5.0,
    shutdown_timeout: float = 10.0,
    device: Device = "auto",
    dtype: DType = "auto",
    quant: Literal["none", "int8", "nf4"] | None = None,
) -> int:
    """Serve the model over an OpenAI-compatible HTTP API (for editor plugins and scripts).

    /v1/models, /v1/completions and /v1/chat/completions, with streaming (SSE), stop strings, n and
    usage counts. Concurrent requests are decoded together in the same batch. Listens on loopback
    only unless --host says otherwise; use --api-key whenever other machines can reach it.

    One adapter (`--adapter runs/NAME/adapter`) is applied to every request, as before. Several
    (`--adapter NAME=DIR --adapter NAME2=DIR2`) share the base unmerged: a request's "model" picks one
    (the base by its own name), and requests to different adapters are decoded in the same batch.

    Args:
        model: the .pth checkpoint (a base or a merged model).
        adapter: an adapter folder applied to every request, unmerged; or NAME=DIR, repeatable, to serve
            several adapters on one base, each under its NAME (a bare DIR among several: its run name).
        host: the address to listen on (127.0.0.1: this machine only; 0.0.0.0: every interface).
        port: the TCP port (0 picks a free one).
        api_key: require "Authorization: Bearer KEY" on every /v1 request.
        model_name: the id of --model clients send (default: the run name for runs/NAME/merged.pth, the
            adapter's run name with one plain --adapter, else the checkpoint's file name without .pth).
        max_batch: the most sequences decoded together.
        max_tokens: the completion length when a request does not set max_tokens.
        max_tokens_cap: requests asking for more max_tokens are refused with a 400 error.
        max_prompt_tokens: longer prompts are refused with a 400 error.
        max_queue: sequences that may wait for a free batch row; beyond it requests get 429 and Retry-After.
        prefix_cache_mb: memory for the states of recent prompts, so that a prompt starting with one of them is
            not read again (0: off).
        request_timeout: seconds a request body may take to arrive (then 408).
        keep_alive: seconds an idle keep-alive connection stays open.
        shutdown_timeout: on Ctrl-C / SIGTERM, seconds requests in flight get to finish before they are cancelled.
        device: where to run: auto (CUDA when available), cpu or cuda.
        dtype: weights' precision: auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.
        quant: store the large matrices in int8 or nf4 (less memory; `rwkv1c plan --inference` says what
            fits); default: QUANT of configs/workspace.env (none).
    """
    problems = []
    if not 0 <= port <= 65535:
        problems.append(f"--port must be in 0..65535, got {port}")
    for flag, value in (("--max-batch", max_batch), ("--max-tokens", max_tokens), ("--max-tokens-cap", max_tokens_cap),
                        ("--max-prompt-tokens", max_prompt_tokens)):  # fmt: skip
        if value < 1:
            problems.append(f"{flag} must be >= 1, got {value}")
    if max_tokens > max_tokens_cap:
        problems.append(f"--max-tokens ({max_tokens}) is above --max-tokens-cap ({max_tokens_cap})")
    if max_queue < 0:
        problems.append(f"--max-queue must be >= 0, got {max_queue}")
    if not prefix_cache_mb >= 0:
        problems.append(f"--prefix-cache-mb must be >= 0, got {prefix_cache_mb}")
    for flag, seconds in (("--request-timeout", request_timeout), ("--keep-alive", keep_alive),
                          ("--shutdown-timeout", shutdown_timeout)):  # fmt: skip
        if not seconds > 0:
            problems.append(f"{flag} must be > 0 seconds, got {seconds}")
    single, named = adapter_setup(model, adapter or [], model_name, problems)
    raise_all(problems, "cannot start the server")
    from rwkv1c.infer.api import Limits
    from rwkv1c.infer.server import ServerSettings

    limits = Limits(max_prompt_tokens=max_prompt_tokens, default_max_tokens=max_tokens, max_tokens_cap=max_tokens_cap)
    settings = ServerSettings(api_key=api_key, max_queue=max_queue, request_timeout=request_timeout,
                              keep_alive=keep_alive, shutdown_timeout=shutdown_timeout)  # fmt: skip
    server = setup(model, single, named, model_name=model_name, host=host, port=port, max_batch=max_batch,
                   prefix_cache_mb=prefix_cache_mb, device=device, dtype=dtype, quant=quant, limits=limits,
                   settings=settings)  # fmt: skip
    return run(server, host, api_key)


def adapter_setup(
    model: Path, specs: list[str], model_name: str | None, problems: list[str]
) -> tuple[Path | None, list[tuple[str, Path]]]:
    """(the one adapter applied to every request, or None; the named adapters to choose from)."""
    from rwkv1c.infer.multi_lora import parse_adapter_specs
    from rwkv1c.infer.server import model_name_for

    parsed = parse_adapter_specs(specs)
    if len(parsed) == 1 and parsed[0][0] is None:
        return parsed[0][1], []
    named = [(name or model_name_for(model, folder), folder) for name, folder in parsed]
    ids = [model_name or model_name_for(model), *(n for n, _ in named)]
    doubles = sorted({n for n in ids if ids.count(n) > 1})
    if doubles:
        problems.append(f"two models would answer to {', '.join(doubles)}: give each --adapter its own NAME=DIR "
                        "(and --model-name for the base)")  # fmt: skip
    return None, named


def setup(
    model: Path, single: Path | None, named: list[tuple[str, Path]], *, model_name: str | None, host: str, port: int,
    max_batch: int, prefix_cache_mb: float = 256, device: Device, dtype: DType, quant: Quant | None, limits: Limits,
    settings: ServerSettings,
) -> Server:  # fmt: skip
    """Check that the model fits, load the engine and bind the port (problems reported as UserError)."""
    from rwkv1c.infer.engine import describe, load_engine
    from rwkv1c.infer.server import Server, model_name_for
    from rwkv1c.machine.memory import inference_settings
    from rwkv1c.model.loader import resolve_device

    chosen, head = inference_settings(model, quant, max_batch, resolve_device(device))
    engine = load_engine(model, single, adapters=named, device=device, dtype=dtype, max_batch=max_batch,
                         prefix_cache_mb=prefix_cache_mb, quant=chosen, quantize_head=head)  # fmt: skip
    print(describe(engine), file=sys.stderr)
    name = model_name or model_name_for(model, single)
    aliases = [] if model_name or single else [Path(model).stem]  # runs/NAME/merged.pth also answers "merged"
    try:
        return Server(engine, name, host=host, port=port, max_prompt_tokens=limits.max_prompt_tokens,
                      default_max_tokens=limits.default_max_tokens, max_tokens_cap=limits.max_tokens_cap,
                      aliases=aliases, settings=settings)  # fmt: skip
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                        hint="pick another --port, or stop the program that uses it") from None  # fmt: skip


def run(server: Server, host: str, api_key: str | None) -> int:
    """Serve until SIGINT / SIGTERM: the first stops accepting and lets requests finish, a second cancels them."""
    bound_host, bound_port = server.start()
    if host not in ("127.0.0.1", "localhost", "::1") and api_key is None:
        print("rwkv1c serve: warning: listening beyond this machine without --api-key", file=sys.stderr)
    names = ", ".join(f"'{n}'" for n in server.app.listed)
    what = "model" if len(server.app.listed) == 1 else "models"
    print(f"rwkv1c serve: {what} {names} at http://{bound_host}:{bound_port}/v1 (Ctrl-C stops)", file=sys.stderr)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        again = server.http.should_exit
        print(f"rwkv1c serve: {'cancelling requests in flight' if again else 'stopping'}", file=sys.stderr)
        server.request_stop(force=again)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while server.running:
            server.wait(0.5)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.request_stop(force=True)
        server.wait()
    return 0
