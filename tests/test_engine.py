"""The engine against the `rwkv` package (greedy continuations, penalties), plus batching and caching."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from rwkv1c.infer.engine import Engine, Request, TextTracker
from rwkv1c.infer.fast_decode import FastDecoder
from rwkv1c.infer.sampling import SamplingParams
from rwkv1c.model.rwkv7 import RWKV7
from rwkv1c.model.tokenizer import get_tokenizer
from tests.test_model import reference_model

GREEDY = SamplingParams(max_tokens=12, temperature=0, stop_token_ids=())


def reference_greedy(ref, prompt: list[int], n: int) -> list[int]:
    out, state = ref.forward(prompt, None)
    tokens = []
    for _ in range(n):
        tok = int(out.argmax())
        tokens.append(tok)
        out, state = ref.forward([tok], state)
    return tokens


def random_prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, 65536, (n,), generator=g).tolist() for n in lengths]


@pytest.fixture(scope="module")
def model(tiny_pth: Path) -> RWKV7:
    return RWKV7.from_pth(tiny_pth, dtype=torch.float32)


def engine(model: RWKV7, **kw) -> Engine:
    return Engine(model, get_tokenizer(), **kw)


def test_greedy_equals_rwkv_package_single_and_batched(tiny_pth: Path, model: RWKV7) -> None:
    ref = reference_model(tiny_pth)
    prompts = random_prompts([1, 5, 23, 40, 9])
    max_tokens = [12, 7, 12, 3, 10]  # rows finish at different steps and leave the batch
    want = [reference_greedy(ref, p, n) for p, n in zip(prompts, max_tokens)]
    params = [dataclasses.replace(GREEDY, max_tokens=n) for n in max_tokens]
    alone = [engine(model, max_batch=1).generate([p], q)[0].token_ids for p, q in zip(prompts, params)]
    assert alone == want
    for max_batch in (2, 5):  # 2: waiting prompts join as rows finish; 5: all prefilled together
        got = engine(model, max_batch=max_batch).generate(prompts, params)
        assert [c.token_ids for c in got] == want
        assert [c.finish_reason for c in got] == ["length"] * 5
        assert [c.prompt_tokens for c in got] == [len(p) for p in prompts]


def test_cpu_decode_step_equals_forward(model: RWKV7) -> None:
    tokens = torch.tensor(random_prompts([6, 6, 6], seed=3))
    with torch.no_grad():
        ref, ref_state = model(tokens)
    slots = model.zero_state(5)
    slots.wkv[:, 3:].normal_()  # free rows must stay untouched
    spare = slots.wkv[:, 3:].clone()
    dec = FastDecoder(model)
    assert (dec.kernels, dec.cuda_graphs) == ("torch", False)
    steps = torch.stack([dec(tokens[:, t], slots, 3) for t in range(6)], 1)
    assert ((steps - ref).abs().max() / ref.std()).item() < 1e-4  # forward uses the chunked WKV here
    assert torch.allclose(slots.wkv[:, :3], ref_state.wkv, atol=1e-4)
    assert torch.equal(slots.wkv[:, 3:], spare)


def test_penalties_equal_rwkv_package_pipeline(tiny_pth: Path, model: RWKV7) -> None:
    """Greedy with presence / frequency penalties and decay: the package's PIPELINE.generate, token for token."""
    from rwkv.utils import PIPELINE, PIPELINE_ARGS

    ref = reference_model(tiny_pth)
    pipe = PIPELINE(ref, "rwkv_vocab_v20230424")
    chosen: list[int] = []
    sample_logits = pipe.sample_logits
    pipe.sample_logits = lambda *a, **k: chosen.append(sample_logits(*a, **k)) or chosen[-1]
    # a negative presence penalty makes the model repeat itself, so the counts and their decay matter
    args = PIPELINE_ARGS(temperature=0, top_p=0.5, alpha_frequency=0.8, alpha_presence=-3.0, alpha_decay=0.9)
    prompt = "Процедура ПриЗаписи(Отказ)\n\t"
    pipe.generate(prompt, token_count=20, args=args)
    params = SamplingParams(
        max_tokens=20, temperature=0, presence_penalty=-3.0, frequency_penalty=0.8, penalty_decay=0.9, stop_token_ids=()
    )
    got = engine(model, max_batch=2).generate([prompt, "другой текст"], params)[0]
    assert got.token_ids == chosen
    assert len(set(chosen)) < len(chosen)  # tokens repeat: the frequency counts were exercised
    plain = engine(model).generate([prompt], dataclasses.replace(params, presence_penalty=0, frequency_penalty=0))
    assert plain[0].token_ids != chosen


def test_seeded_sampling_is_reproducible_and_batch_independent(model: RWKV7) -> None:
    p = SamplingParams(max_tokens=8, temperature=1.0, top_p=0.95, seed=7, stop_token_ids=())
    prompts = random_prompts([4, 11, 2], seed=5)
    alone = engine(model).generate([prompts[0]], p)[0].token_ids
    batched = engine(model, max_batch=3).generate(prompts, [p, p.with_seed(8), p.with_seed(9)])
    assert batched[0].token_ids == alone
    again = engine(model).generate([prompts[0]], p)[0].token_ids
    assert again == alone
    other = engine(model).generate([prompts[0]], p.with_seed(123))[0].token_ids
    assert other != alone


def test_stop_token_string_and_length(model: RWKV7) -> None:
    tok = get_tokenizer()
    prompt = random_prompts([8], seed=11)[0]
    free = engine(model).generate([prompt], dataclasses.replace(GREEDY, max_tokens=20))[0]
    ids = free.token_ids
    k = next(i for i in range(3, 20) if ids[i] not in ids[:i])
    by_token = engine(model).generate([prompt], dataclasses.replace(GREEDY, max_tokens=20, stop_token_ids=(ids[k],)))
    assert by_token[0].token_ids == ids[:k] and by_token[0].finish_reason == "stop"
    text = tok.decode(ids)
    cut = len(tok.decode(ids[:5]))
    stop = text[cut : cut + 3]
    assert stop and stop not in text[:cut]
    by_string = engine(model).generate([prompt], dataclasses.replace(GREEDY, max_tokens=20, stop=(stop,)))[0]
    assert by_string.text == text[:cut] and by_string.finish_reason == "stop"
    assert free.finish_reason == "length" and len(ids) == 20
    empty = engine(model).generate([prompt], dataclasses.replace(GREEDY, max_tokens=0))[0]
    assert (empty.text, empty.token_ids, empty.finish_reason) == ("", [], "length")


def test_streamed_pieces_make_the_text(model: RWKV7) -> None:
    prompts = ["Привет, мир", "Функция Сложить(А, Б)"]
    pieces: dict[int, list[str]] = {0: [], 1: []}
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, seed=1, stop=("ок",))
    out = engine(model, max_batch=2).generate(prompts, params, on_text=lambda i, d: pieces[i].append(d))
    for i, c in enumerate(out):
        assert "".join(pieces[i]) == c.text
        assert "\ufffd" not in "".join(pieces[i][:-1])  # only the final flush may hold a broken character
        assert "ок" not in c.text


def test_text_tracker_utf8_and_stops() -> None:
    tok = get_tokenizer()
    byte_id = {tok.token_bytes(i): i for i in range(1, 300) if len(tok.token_bytes(i)) == 1}
    zh = "ж".encode()  # two bytes: each one alone is no character
    tr = TextTracker(tok, ())
    assert tr.push(byte_id[zh[:1]]) == ""
    assert tr.push(byte_id[zh[1:]]) == "ж"
    # a stop string split over tokens; the text before it is held back only while it could be a stop
    tr = TextTracker(tok, ("END",))
    shown = [tr.push(byte_id[bytes([c])]) for c in b"abEN"]
    assert "".join(shown) == "ab"
    assert tr.push(byte_id[b"X"]) == "ENX"
    assert [tr.push(byte_id[bytes([c])]) for c in b"EN"] == ["", ""]
    assert tr.push(byte_id[b"D"]) == "" and tr.stopped
    assert tr.text == "abENX"
    tr = TextTracker(tok, ("\n\n",))
    assert tr.push(byte_id[b"a"]) == "a"
    assert tr.push(byte_id[b"\n"]) == ""
    assert tr.finish() == "\n" and tr.text == "a\n"


def test_shared_preamble_is_prefilled_once(model: RWKV7) -> None:
    preamble = random_prompts([48], seed=21)[0]
    prompts = [preamble + tail for tail in random_prompts([3, 5, 4], seed=22)]
    counted: list[int] = []
    eng = engine(model, max_batch=3)
    forward = eng.model.forward
    eng.model.forward = lambda tokens, *a, **k: (
        counted.append(tokens.shape[0] * tokens.shape[1]) or forward(tokens, *a, **k)
    )  # decode steps do not go through forward: every count is a prefill
    try:
        got = eng.generate(prompts, GREEDY)
        assert sum(counted) == 48 + 3 + 5 + 4
        counted.clear()
        again = eng.generate([prompts[1], prompts[1]], GREEDY)  # the exact prompt is cached: no prefill at all
        assert counted == []
    finally:
        del eng.model.forward
    plain = engine(model, max_batch=3, prefix_cache_mb=0).generate(prompts, GREEDY)
    assert [c.token_ids for c in got] == [c.token_ids for c in plain]
    assert again[0].token_ids == again[1].token_ids == plain[1].token_ids


def test_continue_from_state_equals_one_prompt(model: RWKV7) -> None:
    head, tail = random_prompts([10, 6], seed=31)
    eng = engine(model)
    state, _ = eng.prefill(head)
    cont = eng.generate_from(state, tail, GREEDY)
    whole = engine(model, prefix_cache_mb=0).generate([head + tail], GREEDY)[0]
    assert cont.token_ids == whole.token_ids
    assert cont.state is not None and cont.state_tokens == len(cont.token_ids) - 1
    # the returned state is the state after prompt + token_ids[:state_tokens]
    state2, _ = eng.prefill(head + tail + cont.token_ids[: cont.state_tokens])
    assert torch.allclose(cont.state.wkv, state2.wkv, atol=1e-4)


def test_cancel_leaves_the_others_intact(tiny_pth: Path, model: RWKV7) -> None:
    prompts = random_prompts([5, 7, 9], seed=41)
    eng = engine(model, max_batch=3)
    reqs = [eng.submit(Request(p, dataclasses.replace(GREEDY, max_tokens=10))) for p in prompts]
    for _ in range(3):
        eng.step()
    reqs[0].cancelled = True  # row 0 goes; the last row moves into its place
    eng.run_until_done()
    assert reqs[0].completion is not None and reqs[0].completion.finish_reason == "cancelled"
    ref = reference_model(tiny_pth)
    for r, p in zip(reqs[1:], prompts[1:]):
        assert r.completion is not None and r.completion.token_ids == reference_greedy(ref, p, 10)


def test_bad_requests_are_refused(model: RWKV7) -> None:
    from rwkv1c.errors import UserError

    eng = engine(model)
    with pytest.raises(UserError, match="max_tokens"):
        eng.submit(Request([1, 2], SamplingParams(max_tokens=-1)))
    with pytest.raises(UserError, match="empty"):
        eng.submit(Request([], SamplingParams()))
    with pytest.raises(UserError, match="token ids"):
        eng.submit(Request([70000], SamplingParams()))


def test_adapter_unmerged_equals_merged(tmp_path: Path, tiny_pth: Path) -> None:
    """Base + LoRA adapter (unmerged, through rwkv1c.adapter) generates what the merged checkpoint does."""
    from rwkv1c.fsutil import sha256_file
    from rwkv1c.model.adapter import adapter_config, save_adapter
    from rwkv1c.model.loader import load_model
    from rwkv1c.model.lora import adapter_tensors, add_lora

    r, alpha = 4, 8.0
    model = RWKV7.from_pth(tiny_pth, dtype=torch.float32)
    add_lora(model, r=r, alpha=alpha, targets=["att.key", "att.output", "ffn.value"])
    g = torch.Generator().manual_seed(5)
    tensors = {}
    for k, v in adapter_tensors(model, []).items():
        tensors[k] = torch.randn(v.shape, generator=g) * (0.3 if k.endswith("lora_B") else 0.5)
    cfg = adapter_config(
        base_path=tiny_pth,
        base_sha256=sha256_file(tiny_pth),
        model_config=model.config,
        quant="none",
        r=r,
        alpha=alpha,
        dropout=0.0,
        targets=["att.key", "att.output", "ffn.value"],
        extra_groups=[],
        extra_keys=[],
        training={},
        step=1,
    )
    save_adapter(tmp_path / "adapter", tensors, cfg)
    # the merged checkpoint, by hand: W' = W + (alpha / r) * B @ A
    sd = torch.load(tiny_pth, weights_only=True)
    for key, a in tensors.items():
        if key.endswith(".lora_A"):
            name = key[: -len(".lora_A")] + ".weight"
            b = tensors[key[: -len(".lora_A")] + ".lora_B"]
            sd[name] = (sd[name].float() + alpha / r * b @ a).to(sd[name].dtype)
    merged_path = tmp_path / "merged.pth"
    torch.save({k: v.float() for k, v in sd.items()}, merged_path)
    prompts = random_prompts([6, 13], seed=51)
    base = Engine(load_model(tiny_pth, None, device="cpu", dtype=torch.float32), get_tokenizer())
    unmerged = Engine(load_model(tiny_pth, tmp_path / "adapter", device="cpu", dtype=torch.float32), get_tokenizer())
    merged = Engine(load_model(merged_path, None, device="cpu", dtype=torch.float32), get_tokenizer())
    params = dataclasses.replace(GREEDY, max_tokens=10)
    want = [c.token_ids for c in merged.generate(prompts, params)]
    assert [c.token_ids for c in unmerged.generate(prompts, params)] == want
    assert [c.token_ids for c in base.generate(prompts, params)] != want  # the adapter matters


def test_no_decode_step_runs_for_rows_that_all_finished(model: RWKV7) -> None:
    """When the last row finishes, nothing is pending: the next request does not start with an empty step."""
    eng = engine(model)
    inner, rows_per_step = eng.decoder, []

    def counting(tokens: torch.Tensor, slots: object, n: int) -> torch.Tensor:
        rows_per_step.append(n)
        return inner(tokens, slots, n)  # type: ignore[arg-type]

    eng.decoder = counting  # type: ignore[assignment]
    params = SamplingParams(max_tokens=3, temperature=0.0, stop_at_blank_line=False)
    for _ in range(2):
        eng.generate([[5, 6, 7]], params)
    assert rows_per_step and 0 not in rows_per_step
