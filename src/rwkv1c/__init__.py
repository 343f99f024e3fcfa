"""rwkv1c: fine-tune RWKV-7 with LoRA / QLoRA for 1C:Enterprise code, and run it locally.

The package is a library of parts and one module per command; lower layers never import higher ones:

    errors, hints, fsutil, text, config     shared basics and the settings files (configs/*.env)
    model/                                  RWKV-7, its checkpoints, tokenizer, quantisation, LoRA, adapters
    data/                                   JSONL -> binidx -> documents -> training windows
    train/  infer/                          fine-tuning; generation, chat and the server
    onec/  machine/                         1C sources and evaluation; memory planning, checks, downloads
    commands/                               one module per `rwkv1c` verb
    cli.py                                  the dispatch table

Importing the package imports neither torch nor CUDA; the model is `rwkv1c.model.rwkv7.RWKV7`.
"""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["__version__"]
