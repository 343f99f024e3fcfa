"""The inference part: a loaded model turned into text, fast.

- `sampling.py`     sampling settings (the one set of defaults), penalties and the batched sampler
- `fast_decode.py`  the one-token step: fused Triton kernels and CUDA graphs on GPU, plain PyTorch on CPU
- `engine.py`       continuous batching, prefill, the prompt-prefix state cache, stop handling
- `chat.py`         a conversation kept as the recurrent state
- `server.py`       the OpenAI-compatible HTTP API over an engine
"""
