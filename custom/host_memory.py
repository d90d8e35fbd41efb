"""Keep freed host memory in the process (glibc ``mallopt``), so that CPU training does not page-fault every step.

PyTorch has no caching allocator for CPU tensors: every activation is ``malloc``-ed in the forward pass and freed
after the backward. glibc serves large blocks with ``mmap`` and gives them back to the OS on ``free`` (and trims the
heap top above 128 KiB), so the next step faults the same pages in again: system time that grows with the memory a
step holds at once. A step that keeps two networks' graphs alive (co-teaching, SP-guided, JoCoR) pays it more than
two separate supervised steps do (``scripts/benchmark_spguided.py`` prints the user/system split). How much of this
a process pays depends on its heap layout: a step benchmark that frees everything after each step pays it in full
(SP-guided at the LA CPU patch: 0.10 s of system time per step), whereas in a whole training run other long-lived
allocations sit above the step's blocks and the heap is rarely trimmed (an LA CPU-profile SP-guided training spent
4.5 s of its 277 s in the kernel with and without this setting, same wall time within 0.4%).

:func:`retain_freed_host_memory` raises glibc's mmap threshold to its maximum (32 MiB: blocks up to that size come
from the heap and are reused) and its trim threshold (freed heap memory stays in the process). The resident set size
then stays at the training's peak instead of breathing with every step (peak RSS at the LA CPU profile: 1.93 against
1.87 GB with the defaults in the step benchmark, 1.75 GB both ways in the whole training). The same effect is
available without code through the environment (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_``) or with
jemalloc/tcmalloc; on a GPU PyTorch's own caching allocator already does this for device memory.

The training workflow of every config calls it first (config key ``retain_host_memory``, default ``true``
*(decision)*), so that training never depends on the heap layout for this, and the step benchmarks call it too, so
that they time steps as training runs them. It is process-wide, affects only allocations made after the call, and
changes no result (bit-identical training runs with and without it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["retain_freed_host_memory", "host_allocator_setting", "MAX_MMAP_THRESHOLD", "DEFAULT_TRIM_THRESHOLD"]

logger = logging.getLogger(__name__)

# glibc's mallopt parameter numbers (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's upper limit for M_MMAP_THRESHOLD on 64-bit systems (``DEFAULT_MMAP_THRESHOLD_MAX``)
MAX_MMAP_THRESHOLD = 32 * 1024 * 1024
#: free memory kept at the heap top before it is returned to the OS (the largest value mallopt's int can carry)
DEFAULT_TRIM_THRESHOLD = 2**31 - 1


def _glibc_mallopt():
    """glibc's ``mallopt`` or ``None`` (musl, macOS, Windows)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return mallopt


def retain_freed_host_memory(
    enabled: bool = True,
    mmap_threshold: int = MAX_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
) -> bool:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the OS.

    Args:
        enabled: ``False`` does nothing (returns ``False``): glibc's defaults stay.
        mmap_threshold: bytes; blocks at least this large are ``mmap``-ed (and unmapped on free). At most
            :data:`MAX_MMAP_THRESHOLD` (glibc refuses larger values).
        trim_threshold: bytes of free memory at the heap top before glibc returns it to the OS.

    Returns:
        ``True`` when both settings were applied; ``False`` when disabled or when the C library has no ``mallopt``
        (then nothing changed and an info message is logged).

    Raises:
        ValueError: a threshold is not positive, ``mmap_threshold`` exceeds :data:`MAX_MMAP_THRESHOLD`, or
            ``trim_threshold`` does not fit a C ``int``.
    """
    if not enabled:
        return False
    if not 0 < int(mmap_threshold) <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}] bytes, got {mmap_threshold}.")
    if not 0 < int(trim_threshold) < 2**31:  # mallopt takes a C int
        raise ValueError(f"trim_threshold must be in (0, 2**31) bytes, got {trim_threshold}.")
    mallopt = _glibc_mallopt()
    if mallopt is None:
        logger.info("retain_freed_host_memory: this C library has no mallopt; host allocator left as it is.")
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    if not ok:
        logger.warning("retain_freed_host_memory: mallopt refused the settings; host allocator left as it is.")
    return ok


def host_allocator_setting(retain: bool = True) -> str:
    """Apply :func:`retain_freed_host_memory` (unless ``retain`` is False) and describe the allocator in effect.

    The step benchmarks call this so that they time the steps under the allocator that training uses, and print it.
    """
    import os

    applied = retain_freed_host_memory(enabled=retain)
    environment = {k: v for k, v in os.environ.items() if k.startswith("MALLOC_")}
    if applied:
        setting = (f"freed memory retained as in training (mallopt: mmap threshold {MAX_MMAP_THRESHOLD >> 20} MiB, "
                   f"trim threshold {DEFAULT_TRIM_THRESHOLD >> 20} MiB)")
    else:
        setting = "glibc defaults" if retain is False else "unchanged (no mallopt)"
    return f"host allocator: {setting}" + (f"; environment {environment}" if environment else "")
