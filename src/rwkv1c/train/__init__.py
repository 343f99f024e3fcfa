"""The training part: an RWKV-7 checkpoint fine-tuned with LoRA / QLoRA into an adapter.

- `settings.py`     a run's settings resolved and validated (`RunSpec`), resume rules
- `build.py`        the model a run trains: base, quantisation, LoRA (also what bench/train.py measures)
- `loss.py`         chunked cross-entropy over the trained tokens, the frozen head never materialised
- `loop.py`         `fit`: data, model, optimizer, the steps, validation, checkpoints, resume
- `rundir.py`       runs/NAME/: log, metrics, plot, checkpoints, the final adapter
- `distributed.py`  several GPUs (or CPU processes) through torchrun and DDP
- `merge.py`        an adapter folded into its base: a standalone `.pth`
"""
