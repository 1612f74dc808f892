"""Keep freed memory inside the process, so that a CPU training step does not fault its large buffers in again.

glibc's malloc serves every request above its mmap threshold (at most 32 MiB) with a fresh `mmap` and gives it
back to the operating system with `munmap` when the tensor is freed. A training step at the Multi30k preset's
size allocates several such buffers: the LM head's logits over the 8k vocabulary (~3,500 target tokens × 8,000
floats ≈ 110 MB), their softmax-minus-target gradient, and the gradients flowing back through it. Each one is
new memory every step, and the kernel zero-fills it page by page on first touch: `torch.sub(x, m).exp_()` on a
(3,500, 8,000) tensor takes ~56 ms on a 2-core AMD EPYC against ~14 ms for the same `exp_` in place
(benchmarks/RESULTS.md, session 28). `keep_freed_memory()` tells malloc to serve every request from its heap
and to keep freed heap memory, so the second step reuses the first step's pages.

This is what the PyTorch CPU performance guides get by preloading jemalloc or tcmalloc; here it is two
`mallopt` calls on the C library already loaded, with no new dependency. The cost is that the process's
resident memory stays at its peak instead of shrinking between steps (the peak itself does not change).
It is process-wide, so train.py applies it (config `keep_freed_memory`, on by default) and library code
(`modeling/`) never does.
"""

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
KEEP_UP_TO_BYTES = 1 << 30  # free heap memory above this is still returned (trim threshold)


def glibc():
    """The process's C library if it is glibc (it has `mallopt`), else None (macOS, Windows, musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - raises AttributeError outside glibc
        return libc if hasattr(libc, "mallopt") else None
    except (OSError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Serve large allocations from malloc's heap and keep freed memory for reuse (glibc only).

    Returns True when the setting was applied, False where the C library is not glibc (nothing changes).
    """
    libc = glibc()
    if libc is None:
        logger.info("keep_freed_memory: the C library is not glibc; malloc keeps its defaults")
        return False
    # mallopt returns 1 on success, 0 on a rejected value.
    applied = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP_UP_TO_BYTES) == 1
    if not applied:
        logger.warning("keep_freed_memory: glibc rejected the malloc settings; malloc keeps its defaults")
    return applied


def malloc_defaults() -> bool:
    """Undo `keep_freed_memory()`: glibc's default limits again, and free heap memory returned to the kernel.

    For A/B measurements in one process (benchmarks/keep_freed_memory.py). glibc's defaults are 65,536 mappings
    and a 128 KiB trim threshold; setting them explicitly turns off its dynamic mmap threshold, whose upper bound
    (32 MiB) is below the buffers this is about anyway. Returns False where the C library is not glibc.
    """
    libc = glibc()
    if libc is None:
        return False
    applied = libc.mallopt(M_MMAP_MAX, 65536) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 128 * 1024) == 1
    libc.malloc_trim(0)
    return applied
