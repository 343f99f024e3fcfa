"""`rwkv1c eval`: compare models side by side on held-out 1C code (`rwkv1c.onec.evaluate`)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from rwkv1c.model.loader import Device, DType
from rwkv1c.onec.evaluate import markdown_report, run, setup, write_report


def evaluate(
    *,
    model: list[Path],
    data: Path,
    output: Path,
    adapter: list[Path] | None = None,
    tasks: Path | None = None,
    builtin: bool = True,
    completions: int = 24,
    max_new_tokens: int = 384,
    max_eval_tokens: int = 200_000,
    generation: bool = True,
    device: Device = "auto",
    dtype: DType = "auto",
    batch_size: int = 16,
    seed: int = 1234,
    quant: Literal["none", "int8", "nf4"] | None = None,
) -> int:
    """Compare models on held-out 1C code: loss, bits per byte, and scored generations.

    Each --model is evaluated as is; each --adapter is evaluated on top of the first --model, so
    `--model base.pth --adapter out/adapter` compares the base with the fine-tuned model. Writes
    report.json, report.md, report.png and generations.jsonl to OUTPUT.

    Args:
        model: A model checkpoint (.pth); repeat the flag to compare several.
        data: Held-out JSONL (a `rwkv1c harvest --validation-output` file, or any {"text": ...} rows).
        output: Folder for the report.
        adapter: A LoRA adapter folder applied to the first --model; repeatable.
        tasks: An extra prompt set, JSONL rows {"id", "prompt", "language", "expect": [regex, ...]}.
        builtin: Include the built-in 1C tasks.
        completions: How many complete-the-method prompts to take from --data.
        max_new_tokens: Most tokens generated per answer.
        max_eval_tokens: Token budget of the loss measurement (documents in file order).
        generation: Run the generation part (--no-generation measures the loss only).
        device: Where to run: auto (CUDA if present), cpu or cuda.
        dtype: Weights dtype: auto (fp16 on CUDA, fp32 on CPU), fp16, bf16 or fp32.
        batch_size: Prompts decoded together.
        seed: Seed of the completion-prompt choice (decoding is greedy).
        quant: store each model's large matrices in int8 or nf4 (what a small card can run); default: QUANT
            of configs/workspace.env (none).
    """
    from rwkv1c.machine.memory import inference_settings
    from rwkv1c.model.loader import resolve_device

    chosen, head = quant or "none", False
    if model:
        chosen, head = inference_settings(model[0], quant, batch_size, resolve_device(device))
    plan = setup(
        model=model,
        data=data,
        output=output,
        adapter=adapter or (),
        tasks=tasks,
        builtin=builtin,
        completions=completions,
        max_new_tokens=max_new_tokens,
        max_eval_tokens=max_eval_tokens,
        generation=generation,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        seed=seed,
        quant=chosen,
        quantize_head=head,
    )
    report = run(plan)
    write_report(report, output)
    print(markdown_report(report))
    return 0
