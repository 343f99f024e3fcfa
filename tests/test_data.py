"""Packing documents into training windows: coverage, order, boundaries, masks, sharding, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from rwkv1c.data.documents import END_OF_DOC as EOD
from rwkv1c.data.documents import InMemoryDocuments, Subset, open_documents, split_validation
from rwkv1c.data.packing import Batch, PackedStream, StepPlan, validation_windows
from rwkv1c.errors import UserError


def make_docs(n: int = 23, seed: int = 0, lo: int = 3, hi: int = 40) -> InMemoryDocuments:
    """Documents whose tokens name (document, position): token = 1000 * (doc + 1) + position."""
    rng = np.random.default_rng(seed)
    docs = [[1000 * (d + 1) + j for j in range(int(rng.integers(lo, hi)))] for d in range(n)]
    return InMemoryDocuments.from_lists(docs)


def epoch_windows(docs: InMemoryDocuments, ctx: int, seed: int, epoch: int) -> list[Batch]:
    plan = StepPlan(docs, ctx, micro_bsz=1, grad_accum=1, seed=seed)
    stream = plan.stream(epoch)
    return [stream.window(w) for w in range(len(stream))]


def test_every_document_once_per_epoch_in_seeded_order() -> None:
    docs = make_docs()
    ctx = 16
    for epoch in (0, 1):
        windows = epoch_windows(docs, ctx, seed=5, epoch=epoch)
        # windows overlap by one token: inputs of all windows + the last target rebuild the stream
        stream = np.concatenate([w.tokens[0] for w in windows] + [windows[-1].targets[0, -1:]])
        order = StepPlan(docs, ctx, 1, 1, seed=5).order(epoch)
        expected = np.concatenate([docs.tokens(int(i)) for i in order])
        assert np.array_equal(stream[: len(expected)], expected)
        assert not stream[len(expected) :].any()  # only zero padding after the last document
        assert len(stream) - len(expected) < ctx  # padding only in the last window
        # trained targets: every token except the first of each document, each exactly once
        trained = np.concatenate([w.targets[0][w.weight[0] > 0] for w in windows])
        want = np.concatenate([docs.tokens(int(i))[1:] for i in order])
        assert np.array_equal(trained, want)
    orders = [StepPlan(docs, ctx, 1, 1, seed=s).order(e) for s, e in ((5, 0), (5, 1), (6, 0))]
    assert not np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], orders[2])
    assert np.array_equal(orders[0], StepPlan(docs, ctx, 1, 1, seed=5).order(0))
    assert sorted(orders[1]) == list(range(len(docs)))


def test_boundaries_reset_state_and_skip_cross_document_targets() -> None:
    docs = InMemoryDocuments.from_lists([[11, 12, 13], [21, 22], [31, 32, 33, 34]])
    stream = PackedStream(docs, np.array([0, 1, 2]), ctx_len=8)
    # stream: 11 12 13 0 | 21 22 0 | 31 32 33 34 0   (EOD appended to each document)
    w0 = stream.window(0)
    assert w0.tokens[0].tolist() == [11, 12, 13, 0, 21, 22, 0, 31]
    assert w0.targets[0].tolist() == [12, 13, 0, 21, 22, 0, 31, 32]
    assert w0.reset[0].tolist() == [True, False, False, False, True, False, False, True]
    # 0 -> 21 and 0 -> 31 would predict a new document from the previous one: not trained
    assert w0.weight[0].tolist() == [1, 1, 1, 0, 1, 1, 0, 1]
    w1 = stream.window(1)  # starts mid-document: fresh state, nothing from the earlier window
    assert w1.tokens[0, :5].tolist() == [32, 33, 34, 0, 0]
    assert w1.reset[0, 0]
    assert w1.weight[0].tolist() == [1, 1, 1, 0, 0, 0, 0, 0]  # then padding, never trained
    assert len(stream) == 2


def test_instruction_mask_trains_only_the_response() -> None:
    prompt, response = [5, 6, 7], [8, 9]
    docs = InMemoryDocuments.from_lists([prompt + response, [40, 41]], [[False] * 3 + [True] * 2, None])
    assert docs.tokens(0).tolist() == [5, 6, 7, 8, 9, EOD]
    assert docs.mask(0).tolist() == [False, False, False, True, True, True]  # the closing EOD trains
    w = PackedStream(docs, np.array([0, 1]), ctx_len=16).window(0)
    trained = w.targets[0][w.weight[0] > 0].tolist()
    assert trained == [8, 9, EOD, 41, EOD]


def test_one_gpu_and_two_ranks_see_the_same_windows_per_step() -> None:
    docs = make_docs(n=31, seed=1)
    single = StepPlan(docs, 16, micro_bsz=2, grad_accum=2, seed=3, world=1)
    ranks = [StepPlan(docs, 16, micro_bsz=1, grad_accum=2, seed=3, world=2) for _ in range(2)]
    assert single.steps_per_epoch == ranks[0].steps_per_epoch
    for step in range(single.steps_per_epoch + 2):  # into the second epoch
        micro, n = single.step(step)
        parts = [r.step(step, rank) for rank, r in enumerate(ranks)]
        assert all(p[1] == n for p in parts)  # every rank knows the step's global token count
        one = np.concatenate([b.tokens for b in micro])
        two = np.concatenate([parts[rank][0][m].tokens for m in range(2) for rank in range(2)])
        assert sorted(map(tuple, one)) == sorted(map(tuple, two))
        assert n == sum(b.n_trained for b in micro)
    # the two ranks never share a window
    r0 = {tuple(b.tokens[0]) for b in ranks[0].step(0, 0)[0]}
    r1 = {tuple(b.tokens[0]) for b in ranks[1].step(0, 1)[0]}
    assert not r0 & r1


def test_last_step_of_an_epoch_is_filled_with_empty_windows() -> None:
    docs = make_docs(n=7, seed=2)
    plan = StepPlan(docs, 16, micro_bsz=4, grad_accum=1, seed=0)
    assert plan.windows_per_epoch % 4 != 0  # the case under test
    micro, n = plan.step(plan.steps_per_epoch - 1)
    empty = [row for row in range(4) if micro[0].weight[row].sum() == 0]
    assert len(empty) == plan.steps_per_epoch * 4 - plan.windows_per_epoch
    assert n == int(micro[0].weight.sum())


def test_validation_split_and_windows() -> None:
    tr, va = split_validation(100, 0.1, seed=4)
    assert len(va) == 10 and len(tr) == 90 and not set(tr) & set(va)
    assert np.array_equal(va, split_validation(100, 0.1, seed=4)[1])
    assert not np.array_equal(va, split_validation(100, 0.1, seed=5)[1])
    assert len(split_validation(3, 0.01, seed=0)[1]) == 1  # at least one document when asked
    assert len(split_validation(1, 0.5, seed=0)[1]) == 0  # never the only document
    docs = make_docs(n=12)
    val = Subset(docs, va[va < 12]) if (va < 12).any() else Subset(docs, np.array([0, 1]))
    windows = validation_windows(val, 8, max_windows=3)
    assert 1 <= len(windows) <= 3
    assert windows[0].tokens[0, 0] == val.tokens(0)[0]  # stored order, not shuffled


def test_open_documents_reports_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        open_documents(tmp_path / "nothing")
    with pytest.raises(UserError, match="not found"):
        open_documents(tmp_path / "nothing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n[1, 2]\n{"other": 1}\nnot json\n', encoding="utf-8")
    with pytest.raises(UserError) as info:
        open_documents(bad)
    message = str(info.value)
    assert "bad.jsonl:2" in message and "bad.jsonl:3" in message and "bad.jsonl:4" in message
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(UserError, match="no documents"):
        open_documents(empty)


def test_jsonl_read_directly_equals_the_prepared_binidx(tmp_path: Path) -> None:
    import json

    from rwkv1c.commands.prepare import prepare
    from rwkv1c.model.tokenizer import get_tokenizer

    rows = [
        {"text": "Процедура Тест()\n\tВозврат;\nКонецПроцедуры"},
        {"prompt": "Сложи два числа", "response": "Результат = А + Б;"},
        {"messages": [{"role": "user", "content": "Привет"}, {"role": "assistant", "content": "Здравствуйте!"}]},
    ]
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    prepare(src, output=str(tmp_path / "ds"), workers=1)
    from_bin = open_documents(tmp_path / "ds")  # prepare's PREFIX_text_document is found from PREFIX
    from_jsonl = open_documents(src)
    assert len(from_bin) == len(from_jsonl) == 3
    for i in range(3):
        assert np.array_equal(from_bin.tokens(i), from_jsonl.tokens(i))
        mb, mj = from_bin.mask(i), from_jsonl.mask(i)
        assert (mb is None or mb.all()) == (mj is None)
        if mj is not None:
            assert np.array_equal(mb, mj)
    assert from_jsonl.mask(0) is None  # plain text trains in full
    w = PackedStream(from_jsonl, np.array([1]), ctx_len=64).window(0)
    trained = w.targets[0][w.weight[0] > 0].tolist()
    assert trained[-1] == EOD and get_tokenizer().decode(trained[:-1]) == " Результат = А + Б;"


def test_lengths_come_from_the_index_and_match_the_tokens(tmp_path: Path) -> None:
    """Document lengths (EOD appended where missing) without reading tokens; too short documents are dropped."""
    from rwkv1c.data.binidx import BinIdxWriter

    raw = [[5, 6, 7], [8, 0], [], [9], [0], [3, 4, 5, 6, 0]]
    with BinIdxWriter(tmp_path / "d") as w:
        for doc in raw:
            w.add(doc)
    docs = open_documents(tmp_path / "d")
    assert isinstance(docs, Subset) and docs.indices.tolist() == [0, 1, 3, 5]  # [] and [0] hold no target
    assert docs.lengths().tolist() == [len(docs.tokens(i)) for i in range(len(docs))] == [4, 2, 2, 5]
    stream = PackedStream(docs, np.array([3, 0]), ctx_len=4)
    assert stream.starts.tolist() == [0, 5, 9]
