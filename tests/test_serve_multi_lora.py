"""Several adapters on one base, unmerged, in one batch (`rwkv1c.infer.multi_lora`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from rwkv1c.errors import UserError
from rwkv1c.infer.engine import Request, load_engine
from rwkv1c.infer.multi_lora import parse_adapter_specs
from rwkv1c.infer.sampling import SamplingParams
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.tokenizer import get_tokenizer

GREEDY = SamplingParams(temperature=0, max_tokens=8)
PROMPTS = ["Процедура Тест()", "Функция Сумма(А, Б)", "Запрос = Новый Запрос;", "Если"]


def make_adapter(
    folder: Path, base: Path, *, r: int, alpha: float, targets: Sequence[str], seed: int, extra: Sequence[str] = ()
) -> Path:
    """A LoRA adapter with random non-zero A and B, so that it changes the model (and differs from others);
    `extra` groups get a trained copy of block 0's ln1 (enough to be refused)."""
    from rwkv1c.fsutil import sha256_file
    from rwkv1c.model.adapter import adapter_config, save_adapter
    from rwkv1c.model.config import ModelConfig
    from rwkv1c.model.rwkv7 import load_checkpoint

    config = ModelConfig.from_state_dict(load_checkpoint(base))
    C, F = config.n_embd, config.dim_ffn
    sizes = {"att.receptance": (C, C), "att.key": (C, C), "att.value": (C, C), "att.output": (C, C),
             "ffn.key": (C, F), "ffn.value": (F, C)}  # (in, out)  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for i in range(config.n_layer):
        for t in targets:
            n_in, n_out = sizes[t]
            tensors[f"blocks.{i}.{t}.lora_A"] = torch.randn(r, n_in, generator=g) * 0.4
            tensors[f"blocks.{i}.{t}.lora_B"] = torch.randn(n_out, r, generator=g) * 0.4
    keys = ["blocks.0.ln1.weight"] if extra else []
    for k in keys:
        tensors[k] = 1 + 0.4 * torch.randn(C, generator=g)
    cfg = adapter_config(
        base_path=base, base_sha256=sha256_file(base), model_config=config, quant="none", r=r, alpha=alpha,
        dropout=0.0, targets=list(targets), extra_groups=list(extra), extra_keys=keys, training={}, step=1,
    )  # fmt: skip
    save_adapter(folder, tensors, cfg)
    return folder


@pytest.fixture(scope="module")
def adapters(tiny_pth: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    return {
        "alpha": make_adapter(root / "a", tiny_pth, r=4, alpha=8.0, targets=["att.key", "ffn.value"], seed=1),
        "beta": make_adapter(root / "b", tiny_pth, r=8, alpha=4.0, targets=["att.receptance", "att.output"], seed=2),
    }


class Alone:
    """Greedy completions from an engine with one adapter applied the ordinary way (peft, `--adapter DIR`), or
    none ("tiny"), remembered: several tests ask for the same ones."""

    def __init__(self, tiny_pth: Path, adapters: dict[str, Path]) -> None:
        folders = {"tiny": None, **adapters}
        self.engines = {
            n: load_engine(tiny_pth, f, device="cpu", dtype="fp32", max_batch=4) for n, f in folders.items()
        }
        self.memo: dict[tuple[str, tuple[int, ...], int], list[int]] = {}

    def __call__(self, name: str, prompt: str | list[int], max_tokens: int = GREEDY.max_tokens) -> list[int]:
        engine = self.engines[name]
        ids = tuple(engine.encode(prompt) if isinstance(prompt, str) else prompt)
        key = (name, ids, max_tokens)
        if key not in self.memo:
            params = dataclasses.replace(GREEDY, max_tokens=max_tokens)
            self.memo[key] = engine.generate([list(ids)], params)[0].token_ids
        return self.memo[key]


@pytest.fixture(scope="module")
def alone(tiny_pth: Path, adapters: dict[str, Path]) -> Alone:
    return Alone(tiny_pth, adapters)


def test_each_request_of_a_mixed_batch_equals_its_adapter_alone(
    tiny_pth: Path, adapters: dict[str, Path], alone: Alone
) -> None:
    multi = load_engine(tiny_pth, adapters=list(adapters.items()), device="cpu", dtype="fp32", max_batch=8)
    assert multi.adapter_names == ["alpha", "beta"]
    # every prompt under every adapter and the base, all in one batch (rows of three adapters share steps)
    requests = [multi.submit(Request(multi.encode(p), GREEDY, adapter=a)) for p in PROMPTS[:2] for a in (0, 1, 2)]
    requests.append(multi.submit(Request(multi.encode(PROMPTS[2]), dataclasses.replace(GREEDY, max_tokens=3),
                                         adapter=2)))  # fmt: skip  # finishes early: rows move under the others
    requests += [multi.submit(Request(multi.encode(PROMPTS[3]), GREEDY, adapter=a)) for a in (1, 0)]
    multi.run_until_done()
    names = ["tiny", "alpha", "beta"]
    for r in requests:
        want = alone(names[r.adapter], r.prompt_ids, r.params.max_tokens)
        assert r.completion is not None and r.completion.token_ids == want, (r.adapter, r.prompt_ids)
    outs = {r.adapter: r.completion.token_ids for r in requests[:3] if r.completion}
    assert len({tuple(v) for v in outs.values()}) == 3  # the adapters do change the output


def test_the_prefix_cache_keeps_adapters_apart(tiny_pth: Path, adapters: dict[str, Path], alone: Alone) -> None:
    multi = load_engine(tiny_pth, adapters=list(adapters.items()), device="cpu", dtype="fp32", max_batch=4)
    ids = multi.encode(PROMPTS[0])
    base_first = multi.generate_from(None, ids, GREEDY)  # caches the base's state after the prompt
    again = [multi.submit(Request(list(ids), GREEDY, adapter=a)) for a in (1, 0)]
    multi.run_until_done()
    assert again[0].completion is not None and again[0].completion.token_ids == alone("alpha", ids)
    assert again[1].completion is not None and again[1].completion.token_ids == base_first.token_ids


def test_refuses_adapters_that_cannot_share_the_base(tiny_pth: Path, tmp_path: Path, adapters: dict[str, Path]) -> None:
    from rwkv1c.model.checkpoint import load_checkpoint

    norms = make_adapter(tmp_path / "n", tiny_pth, r=4, alpha=8.0, targets=["att.key"], seed=3, extra=["norms"])
    other = tmp_path / "other.pth"
    torch.save({k: v * 1.01 for k, v in load_checkpoint(tiny_pth).items()}, other)  # same sizes, other weights
    with pytest.raises(UserError) as exc:
        load_engine(other, adapters=[("n", norms), ("missing", tmp_path / "nope"), ("a", adapters["alpha"])],
                    device="cpu", dtype="fp32")  # fmt: skip
    text = str(exc.value)
    assert "n: the adapter" in text and "norms" in text and "cannot share the base" in text
    assert "missing: adapter folder not found" in text
    with pytest.raises(UserError, match="a: other.pth has the same sizes but not the same weights"):
        load_engine(other, adapters=[("a", adapters["alpha"])], device="cpu", dtype="fp32")


def test_adapter_specs() -> None:
    assert parse_adapter_specs(["x=runs/a/adapter", "runs/b/adapter", "runs/c=d/adapter"]) == [
        ("x", Path("runs/a/adapter")),
        (None, Path("runs/b/adapter")),
        (None, Path("runs/c=d/adapter")),
    ]


def test_a_server_of_several_adapters_batches_them_together(
    tiny_pth: Path, adapters: dict[str, Path], alone: Alone
) -> None:
    import threading

    import openai

    from rwkv1c.infer.server import Server

    engine = load_engine(tiny_pth, adapters=list(adapters.items()), device="cpu", dtype="fp32", max_batch=8)
    mixed: list[set[int]] = []
    step = engine.step

    def spy() -> None:
        mixed.append({r.adapter for r in engine.rows})
        step()

    engine.step = spy  # type: ignore[method-assign]
    srv = Server(engine, "tiny", port=0, quiet=True)
    host, port = srv.start()
    try:
        client = openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key="x", max_retries=0, timeout=60)
        assert [m.id for m in client.models.list().data] == ["tiny", "alpha", "beta"]
        asks = [(name, p) for p in PROMPTS[:2] for name in ("tiny", "alpha", "beta")]
        got: dict[tuple[str, str], str] = {}

        def ask(name: str, prompt: str) -> None:
            got[name, prompt] = client.completions.create(model=name, prompt=prompt, max_tokens=8,
                                                          temperature=0).choices[0].text  # fmt: skip

        threads = [threading.Thread(target=ask, args=a) for a in asks]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    finally:
        srv.stop()
    for name, prompt in asks:
        assert got[name, prompt] == get_tokenizer().decode(alone(name, prompt)), (name, prompt)
    assert max(len(s) for s in mixed) > 1  # rows of different adapters shared decode steps


def test_serve_names_its_models(tiny_pth: Path, tmp_path: Path) -> None:
    from rwkv1c.commands.serve import adapter_setup
    from rwkv1c.infer.server import model_name_for

    assert model_name_for(Path("runs/bsl-v1/merged.pth")) == "bsl-v1"
    assert model_name_for(Path("models/rwkv7-g1-1.5b.pth")) == "rwkv7-g1-1.5b"
    assert model_name_for(Path("base.pth"), Path("runs/bsl-v1/adapter")) == "bsl-v1"
    problems: list[str] = []
    assert adapter_setup(Path("base.pth"), ["runs/x/adapter"], None, problems) == (Path("runs/x/adapter"), [])
    assert adapter_setup(Path("base.pth"), ["a=runs/x/adapter", "runs/y/adapter"], None, problems) == (
        None, [("a", Path("runs/x/adapter")), ("y", Path("runs/y/adapter"))])  # fmt: skip
    assert not problems
    adapter_setup(Path("base.pth"), ["base=runs/x/adapter", "runs/y/final", "y=runs/z/adapter"], None, problems)
    assert len(problems) == 1 and "answer to base, y" in problems[0]


@pytest.mark.gpu
def test_cuda_graphs_read_each_steps_adapters(tmp_path: Path) -> None:
    """Under the fused decoder and its CUDA graphs, rows follow the adapter index written before each step."""
    from rwkv1c.infer.fast_decode import FastDecoder, decode_step_torch, triton_available
    from rwkv1c.infer.multi_lora import attach
    from tests.conftest import make_checkpoint

    if not triton_available():
        pytest.skip("needs a CUDA GPU and Triton")
    model = RWKV7.from_pth(make_checkpoint(tmp_path / "m.pth", n_layer=2, n_embd=256), device="cuda",
                           dtype=torch.float32)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    loras = []
    for k in range(3):
        t = {}
        for b in range(2):
            for part in ("att.key", "att.output", "ffn.value")[k:]:  # different targets per adapter
                lin = model.get_submodule(f"blocks.{b}.{part}")
                t[f"blocks.{b}.{part}.lora_A"] = torch.randn(4 + 4 * k, lin.in_features, generator=g) * 0.3
                t[f"blocks.{b}.{part}.lora_B"] = torch.randn(lin.out_features, 4 + 4 * k, generator=g) * 0.3
        loras.append((f"a{k}", 1.5, t))
    rows = attach(model, loras)
    rows.bind(8)
    graphs = FastDecoder(model, kernels="triton", cuda_graphs=True)
    state, ref = model.zero_state(8), model.zero_state(8)
    tokens = torch.randint(0, 65536, (6, 5), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    for step in range(5):
        ids = torch.tensor([(i + step) % 4 for i in range(6)], device="cuda")  # rows change adapter every step
        rows.for_decode(ids)
        got = graphs(tokens[:, step], state, 6).clone()
        want = decode_step_torch(model, tokens[:, step], ref.att_shift[:, :6], ref.ffn_shift[:, :6], ref.wkv[:, :6])
        assert ((got - want).abs().max() / want.std()).item() < 1e-4, step
