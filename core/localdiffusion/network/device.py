"""Where networks run and how: ``auto`` picks CUDA when it is there, else the CPU; the autocast
precision of each device; the batch size a device takes when the user leaves it automatic."""

from __future__ import annotations

import os

import torch

from localdiffusion.errors import InputError

#: slices per network call on the CPU when the batch size is automatic (larger batches are no
#: faster on 2 cores; section 1 of research/RECORD.md)
CPU_BATCH = 8
#: share of the GPU's free memory an automatic batch may use, and the largest batch it picks
GPU_MEMORY_SHARE = 0.6
MAX_AUTO_BATCH = 256


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_count(requested: int = 0, sharers: int | None = None) -> int:
    """Threads for this process's networks.

    Args:
        requested: a positive count is taken as it is; 0 divides the cores.
        sharers: how many processes or workers share this process's cores (default: torchrun's
            ``LOCAL_WORLD_SIZE``, the ranks on this machine; 1 without torchrun).
    Returns:
        ``requested``, or the available cores divided by ``sharers`` (at least 1).
    """
    if requested > 0:
        return requested
    if sharers is None:
        sharers = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, available_cores() // max(1, sharers))


def use_threads(requested: int = 0, sharers: int | None = None) -> int:
    """Set torch's intra-op threads to :func:`thread_count` (ranks and workers then divide the cores
    instead of each taking all of them); returns the count."""
    count = thread_count(requested, sharers)
    torch.set_num_threads(count)
    return count


def select_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda requested but CUDA is not available")
    return torch.device(device)


def autocast_dtype(device_type: str) -> torch.dtype:
    """bf16 on the CPU and on GPUs that have it (no loss scaling, fp32's range), else fp16."""
    if device_type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def auto_batch_size(run_slices, slice_shape: tuple[int, int], device: torch.device, requested: int) -> int:
    """``requested`` if positive; else :data:`CPU_BATCH` on the CPU, and on a GPU as many slices
    as :data:`GPU_MEMORY_SHARE` of its free memory holds, measured by ``run_slices(n)`` (one
    forward pass on ``n`` whole slices of ``slice_shape``)."""
    if requested > 0:
        return requested
    if device.type != "cuda":
        return CPU_BATCH
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    run_slices(2)
    torch.cuda.synchronize(device)
    per_slice = max(1, (torch.cuda.max_memory_allocated(device) - before) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    return int(max(1, min(MAX_AUTO_BATCH, GPU_MEMORY_SHARE * free // per_slice)))
