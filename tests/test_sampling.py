"""Sampling: the logit transforms, and the sampler's distribution against the `rwkv` package's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rwkv1c.infer.sampling import Penalties, SamplingParams, frequency_weights, nucleus_mask, sample


def package_distribution(logits: torch.Tensor, temperature: float, top_p: float, top_k: int) -> np.ndarray:
    """The exact probabilities the `rwkv` package draws from (read off its np.random.choice call)."""
    from rwkv import utils

    seen: dict[str, np.ndarray] = {}

    def capture(a: int, p: np.ndarray) -> int:
        seen["p"] = np.asarray(p, dtype=np.float64)
        return 0

    original = utils.np.random.choice
    utils.np.random.choice = capture
    try:
        utils.PIPELINE.sample_logits(None, logits.clone(), temperature=temperature, top_p=top_p, top_k=top_k)
    finally:
        utils.np.random.choice = original
    return seen["p"]


def our_distribution(
    logits: torch.Tensor, temperature: float, top_p: float, top_k: int, shortlist: int, grid: int = 200_000
) -> np.ndarray:
    """Our sampler draws by inverse CDF: evaluating it on a fine grid of uniforms gives its distribution."""
    u = (torch.arange(grid, dtype=torch.float64) + 0.5) / grid
    rows = logits.expand(grid, -1)
    t = torch.full((grid,), temperature)
    p = torch.full((grid,), top_p)
    k = torch.full((grid,), top_k, dtype=torch.long)
    drawn = sample(rows, t, p, k, u.float(), shortlist=shortlist)
    return np.bincount(drawn.numpy(), minlength=logits.shape[-1]) / grid


CASES = [
    (1.0, 0.85, 0),
    (0.7, 0.6, 0),
    (1.3, 1.0, 0),
    (1.0, 1.0, 3),
    (0.5, 0.9, 4),
    (2.0, 0.3, 0),
]


@pytest.mark.parametrize("shortlist", [1024, 3], ids=["sorted", "shortlist"])
@pytest.mark.parametrize(("temperature", "top_p", "top_k"), CASES)
def test_distribution_matches_rwkv_package(temperature: float, top_p: float, top_k: int, shortlist: int) -> None:
    """shortlist=3: the three likeliest tokens first; the whole vocabulary when the nucleus is larger."""
    logits = torch.tensor([2.0, 1.5, 1.4, 0.3, -0.5, -1.0, -3.0, 0.9])
    want = package_distribution(logits, temperature, top_p, top_k)
    got = our_distribution(logits, temperature, top_p, top_k, shortlist)
    assert np.abs(got - want).max() < 2e-4, (got, want)


def test_top_p_to_zero_is_greedy() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 1000, generator=g) * 3
    u = torch.rand(64, generator=g)
    ones = torch.ones(64)
    drawn = sample(logits, ones, torch.full((64,), 1e-9), torch.zeros(64, dtype=torch.long), u)
    assert torch.equal(drawn, logits.argmax(-1))
    # temperature 0 as well, whatever the other settings and the uniform draw
    drawn = sample(logits, torch.zeros(64), torch.full((64,), 0.9), torch.full((64,), 50), u)
    assert torch.equal(drawn, logits.argmax(-1))


def test_mixed_rows_greedy_and_sampled() -> None:
    logits = torch.tensor([[0.0, 5.0, 4.9], [0.0, 5.0, 4.9]])
    u = torch.tensor([0.99, 0.99])
    drawn = sample(logits, torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0]), torch.tensor([0, 0]), u)
    assert drawn.tolist() == [1, 2]  # row 0 greedy; row 1's high uniform lands on the second token


def test_nucleus_mask_edge_cases() -> None:
    probs = torch.tensor([[0.4, 0.3, 0.2, 0.1]])  # already sorted, descending
    z = torch.zeros(1, dtype=torch.long)
    keep = lambda p, k: nucleus_mask(probs, torch.tensor([p]), torch.tensor([k]))[0].tolist()
    assert keep(0.0, 0) == [True, False, False, False]
    assert keep(0.4, 0) == [True, False, False, False]  # reaching top_p exactly stops there
    assert keep(0.41, 0) == [True, True, False, False]
    assert keep(0.95, 0) == [True, True, True, True]
    assert keep(1.0, 0) == [True, True, True, True]
    assert keep(1.0, 2) == [True, True, False, False]
    assert keep(0.5, 1) == [True, False, False, False]
    assert keep(1.0, 10) == [True, True, True, True]  # top_k beyond the vocabulary keeps all
    ties = torch.tensor([[0.3, 0.3, 0.3, 0.1]])
    assert nucleus_mask(ties, torch.tensor([0.2]), z)[0].tolist() == [True, True, True, False]  # ties stay
    # a float sum that never reaches 1.0 still keeps every token at top_p = 1
    tiny = torch.full((1, 7), 1 / 7 - 1e-8)
    assert nucleus_mask(tiny, torch.tensor([1.0]), z).all()


def test_penalties_decay_and_exemptions() -> None:
    weights = torch.tensor([1.0, 1.0, 0.0, 1.0])  # token 2 is "digits": never counted, still "present"
    pen = Penalties(2, weights)
    presence, frequency = torch.tensor([0.5, 0.0]), torch.tensor([0.25, 1.0])
    decay = torch.tensor([0.5, 1.0])
    for toks in ([1, 3], [1, 2], [2, 3]):
        pen.update(torch.tensor(toks), decay)
    # row 0 generated 1, 1, 2 with decay 0.5: count(1) = (1 * 0.5 + 1) * 0.5 = 0.75, count(2) = 0
    logits = torch.zeros(2, 4)
    out = pen.apply(logits, presence, frequency)
    assert out[0].tolist() == pytest.approx([0.0, -(0.5 + 0.25 * 0.75), -0.5, 0.0])
    # row 1 generated 3, 2, 3 with no decay: count(3) = 2, token 2 present but uncounted, presence 0
    assert out[1].tolist() == pytest.approx([0.0, 0.0, 0.0, -2.0])
    pen.move_row(1, 0)
    pen.clear_row(1)
    out = pen.apply(logits, presence, frequency)
    assert out[1].tolist() == [0.0, 0.0, 0.0, 0.0]
    assert out[0, 3].item() == pytest.approx(-(0.5 + 0.25 * 2))


def test_frequency_weights() -> None:
    texts = [b" ", b"\t", b"7", b"12", b" \t0", b" 1", b"a", b"\xd0", b"", b"  "]
    assert frequency_weights(texts) == [0, 0, 0, 0, 0, 1, 1, 1, 0, 1]  # substrings only: " 1" counts


def test_params_report_every_problem() -> None:
    bad = SamplingParams(max_tokens=-1, temperature=-0.5, top_p=1.5, top_k=-2, penalty_decay=2.0, stop=("",))
    problems = bad.problems(vocab_size=10)
    assert len(problems) == 6
    assert SamplingParams(stop_token_ids=(0, 12)).problems(vocab_size=10) == ["token ids out of range 0..9: [12]"]
    assert SamplingParams().problems(vocab_size=10) == []
    assert SamplingParams(temperature=0).greedy and SamplingParams(top_p=0).greedy
    assert SamplingParams(stop=("x",), stop_at_blank_line=True).stop_strings == ("x", "\n\n")
