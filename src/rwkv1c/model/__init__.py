"""The model part: RWKV-7 itself and everything that turns files into a model object.

- `config.py`      the sizes (torch-free), the low-rank rule, parameter counts
- `rwkv7.py`       the whole RWKV-7 in one file, parameters named by checkpoint keys
- `wkv.py`         the WKV operator: a plain-PyTorch reference, an exact chunked form, fla's kernel
- `checkpoint.py`  reading and validating official `.pth` files; the cached base sha256
- `tokenizer.py`   the RWKV World tokenizer (token 0 ends a document)
- `init.py`        a freshly initialised state dict in the official layout
- `inspect.py`     what a checkpoint is
- `quant.py`       NF4 / int8 block linears (bitsandbytes), for QLoRA and quantised inference
- `lora.py`        LoRA through peft, and the parameter groups that can train whole
- `adapter.py`     the self-describing adapter folder, applied unmerged
- `loader.py`      `load_model`: the one loader every inference command uses

Nothing here imports torch at import time, except `rwkv7.py` and `wkv.py`.
"""
