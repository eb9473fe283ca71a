"""Out-of-memory errors: recognising them on every device, and a per-attempt memory cap.

A CUDA allocation that fails raises ``torch.OutOfMemoryError``; the CPU allocator raises a
plain ``RuntimeError`` that says so. Both end an attempt with status "oom" (not "failed"), as
the paper records LOT-L's out-of-memory runs.

The cap (``--memory-per-trial``) keeps trials that share a device from starving each other and
turns going past it into such an error: on CUDA the caching allocator's per-process fraction;
on a CPU the address space the attempt may add to what its process holds (RLIMIT_AS, restored
afterwards; address space counts reserved as well as touched memory).
"""

from __future__ import annotations

import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch

CPU_ALLOCATOR_MESSAGES = (
    "DefaultCPUAllocator: can't allocate memory",
    "DefaultCPUAllocator: not enough memory",
)


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError | MemoryError):
        return True
    return isinstance(error, RuntimeError) and any(m in str(error) for m in CPU_ALLOCATOR_MESSAGES)


def address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


@contextmanager
def memory_cap(device: torch.device, limit_gib: float | None) -> Iterator[None]:
    """Inside the block, allocations past ``limit_gib`` GiB raise an out-of-memory error."""
    if limit_gib is None:
        yield
    elif device.type == "cuda":
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(min(1.0, limit_gib * 2**30 / total), device)
        try:
            yield
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        cap = address_space_bytes() + int(limit_gib * 2**30)
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
        try:
            yield
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
