"""hint_for: constructed exceptions map to the right fix (and unrelated ones to none)."""

from __future__ import annotations

import io

import pytest
import torch

from rwkv1c.hints import hint_for, print_hint

TORCH_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 23.65 GiB of which 1.05 GiB is "
    "free. Including non-PyTorch memory, this process has 22.58 GiB memory in use."
)


def test_cuda_oom_names_sizes_and_plan() -> None:
    hint = hint_for(torch.OutOfMemoryError(TORCH_OOM))
    assert hint is not None
    assert "2.00 GiB" in hint and "23.65 GiB" in hint
    assert "--vram 24" in hint  # the card's size goes into the suggested plan command
    for knob in ("gradient checkpointing", "--micro-bsz", "--ctx-len", "rwkv1c plan"):
        assert knob in hint


def test_oom_as_plain_runtime_error_message() -> None:
    hint = hint_for(RuntimeError("CUDA error: out of memory"))
    assert hint is not None and "rwkv1c plan" in hint


def test_host_memory_error_points_at_wslconfig() -> None:
    hint = hint_for(MemoryError())
    assert hint is not None and ".wslconfig" in hint and "wsl --shutdown" in hint
    cpu = RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 6442450944 bytes.")
    assert ".wslconfig" in (hint_for(cpu) or "")


@pytest.mark.parametrize(
    "message",
    [
        "CUDA error: no kernel image is available for execution on the device",
        "NVIDIA GeForce RTX 5090 with CUDA capability sm_120 is not compatible with the current PyTorch installation.",
    ],
)
def test_no_kernel_image_points_at_wheel_index(message: str) -> None:
    hint = hint_for(RuntimeError(message))
    assert hint is not None
    assert "RTX 50xx" in hint and "cu128" in hint and "bootstrap.sh" in hint


@pytest.mark.parametrize(
    ("message", "expect"),
    [
        ("Found no NVIDIA driver on your system. Please check that you have an NVIDIA GPU", "Windows"),
        ("CUDA driver initialization failed, you might not have a CUDA gpu.", "Linux NVIDIA driver"),
        ("Torch not compiled with CUDA enabled", "CPU-only build"),
        ("The NVIDIA driver on your system is too old (found version 11040).", "580"),
    ],
)
def test_cuda_init_failures(message: str, expect: str) -> None:
    cls = AssertionError if "compiled" in message else RuntimeError
    hint = hint_for(cls(message))
    assert hint is not None and expect in hint


def test_load_state_dict_size_mismatch_means_other_base() -> None:
    msg = (
        "Error(s) in loading state_dict for RWKV7:\n\tsize mismatch for blocks.0.att.key.lora_A: copying a param "
        "with shape torch.Size([32, 2048]) from checkpoint, the shape in current model is torch.Size([32, 1024])."
    )
    hint = hint_for(RuntimeError(msg))
    assert hint is not None and "adapter" in hint and "base" in hint


def test_bitsandbytes_without_gpu_support() -> None:
    exc = RuntimeError("The installed version of bitsandbytes was compiled without GPU support.")
    hint = hint_for(exc)
    assert hint is not None and "bitsandbytes" in hint and "QLoRA" in hint
    missing = ModuleNotFoundError("No module named 'bitsandbytes'", name="bitsandbytes")
    assert "not installed" in (hint_for(missing) or "")


def test_triton_missing_and_no_compiler() -> None:
    missing = ModuleNotFoundError("No module named 'triton'", name="triton")
    hint = hint_for(missing)
    assert hint is not None and "[gpu]" in hint
    compiler = RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")
    assert "build-essential" in (hint_for(compiler) or "")


def test_compile_failure_points_to_the_switch() -> None:
    class BackendCompilerFailed(RuntimeError):  # the name torch._dynamo raises with
        pass

    hint = hint_for(BackendCompilerFailed("backend='inductor' raised: CalledProcessError ..."))
    assert hint is not None and "COMPILE=off" in hint
    assert hint_for(RuntimeError("something else entirely")) is None


def test_hint_found_through_the_cause_chain() -> None:
    try:
        try:
            raise torch.OutOfMemoryError(TORCH_OOM)
        except torch.OutOfMemoryError as inner:
            raise ValueError("training step 1 failed") from inner
    except ValueError as outer:
        hint = hint_for(outer)
    assert hint is not None and "rwkv1c plan" in hint


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad literal"),
        KeyError("x"),
        ModuleNotFoundError("No module named 'yaml'", name="yaml"),
        OSError(2, "x"),
    ],
)
def test_unrelated_errors_have_no_hint(exc: BaseException) -> None:
    assert hint_for(exc) is None


def test_print_hint_shows_traceback_then_fix() -> None:
    out = io.StringIO()
    try:
        raise torch.OutOfMemoryError(TORCH_OOM)
    except torch.OutOfMemoryError as exc:
        assert print_hint("train", exc, out) is True
    text = out.getvalue()
    assert (
        text.index("Traceback") < text.index("rwkv1c train: OutOfMemoryError: CUDA out of memory") < text.index("hint:")
    )


def test_print_hint_stays_silent_without_a_hint() -> None:
    out = io.StringIO()
    assert print_hint("train", ValueError("something else"), out) is False
    assert out.getvalue() == ""
