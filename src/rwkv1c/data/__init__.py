"""The data part: from JSONL rows to the windows a training step reads.

- `prompts.py`    the RWKV chat format, in one place for training data, generation and evaluation
- `prepare.py`    JSONL rows -> tokens and loss masks, streamed by worker processes (`rwkv1c prepare`)
- `binidx.py`     the RWKV-LM / Megatron binidx format, plus our optional loss mask
- `documents.py`  a training set as documents (binidx or JSONL), and the validation split
- `packing.py`    documents laid end to end into ctx_len windows, and which windows each step trains on
"""
