"""mt/cpu_memory.py: with keep_freed_memory() a large tensor comes from malloc's heap and its memory stays in the
process after it is freed; without it glibc maps and unmaps it. Each case runs in a fresh interpreter, because
the setting is process-wide."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mt.config import load_config
from mt.cpu_memory import glibc

REPO_ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20

PROBE = """
import ctypes, json, sys
import torch
from mt.cpu_memory import glibc, keep_freed_memory, malloc_defaults

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                     "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = glibc()
libc.mallinfo2.restype = MallInfo2
applied = None
if sys.argv[1] in ("on", "on-then-off"):
    applied = keep_freed_memory()
if sys.argv[1] == "on-then-off":
    applied = malloc_defaults()
x = torch.ones(64 << 20, dtype=torch.uint8)  # 64 MiB, above glibc's largest mmap threshold (32 MiB)
during = libc.mallinfo2()
del x
after = libc.mallinfo2()
print(json.dumps({"applied": applied, "mapped_during": during.hblkhd, "mapped_after": after.hblkhd,
                  "heap_free_after": after.fordblks}))
"""


def probe(mode: str) -> dict:
    completed = subprocess.run([sys.executable, "-c", PROBE, mode], cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(glibc() is None, reason="mallopt and mallinfo2 are glibc functions")
def test_a_freed_large_tensor_stays_in_the_heap_only_with_the_setting():
    default = probe("off")
    assert default["mapped_during"] >= 64 * MIB  # glibc's default: its own mapping...
    assert default["mapped_after"] < 64 * MIB  # ...given back to the kernel when freed

    kept = probe("on")
    assert kept["applied"] is True
    assert kept["mapped_during"] < 64 * MIB  # served from the heap
    assert kept["heap_free_after"] >= 64 * MIB  # and kept there for the next step

    undone = probe("on-then-off")  # malloc_defaults() restores glibc's behaviour (the benchmark's A/B relies on it)
    assert undone["applied"] is True
    assert undone["mapped_during"] >= 64 * MIB and undone["mapped_after"] < 64 * MIB


def test_train_config_turns_it_on_by_default_and_off_with_the_flag():
    base = ["--model_config", "configs/model/tiny.yaml"]
    assert load_config(base).keep_freed_memory is True
    assert load_config(base + ["--no-keep_freed_memory"]).keep_freed_memory is False
