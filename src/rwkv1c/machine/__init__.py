"""The machine part: what this computer can do, and what a run will need of it.

- `memory.py`  the memory model: predicted GPU and host memory of a run, calibrated on measured peaks
- `doctor.py`  checks of the platform, driver, GPU, torch build, kernels, RAM and disk, each with a fix
- `hub.py`     official checkpoints fetched and verified (the only network access)
"""
