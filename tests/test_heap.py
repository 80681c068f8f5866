"""train.keep_heap: freed memory stays in the process, so repeated large tensors stop faulting fresh pages."""

import json
import subprocess
import sys

from ci_skips import machine_skipif

from vlalign.train import heap

# Allocate, write and free a 40 MB tensor (above glibc's largest dynamic mmap threshold, 32 MiB) 20 times,
# like a training step's activations, and count the minor page faults that took.
FAULTS = """
import json, resource, sys, torch
from vlalign.train.heap import keep_heap
kept = keep_heap() if sys.argv[1] == "keep" else False
torch.ones(10_000_000)  # warm-up
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    torch.ones(10_000_000)  # [10M] fp32, 40 MB, freed at once
print(json.dumps({"kept": kept, "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before}))
"""


def transparent_huge_pages_always() -> bool:
    """With THP "always", fresh mappings get 2 MiB pages: far fewer faults to count either way."""
    try:
        return "[always]" in open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return False


def faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@machine_skipif(heap._glibc() is None, "mallopt is glibc's")
@machine_skipif(transparent_huge_pages_always(), "faults are counted in 4 KiB pages")
def test_kept_heap_reuses_pages_that_the_default_faults_in_every_time():
    default, kept = faults("default"), faults("keep")
    assert kept["kept"] is True
    pages = 20 * 40_000_000 // 4096  # ~195,000 pages of 4 KiB written over the loop
    assert default["faults"] > pages // 2  # glibc's default: fresh pages for every tensor
    assert kept["faults"] < pages // 10  # kept: the same pages again (after at most one more tensor's first touch)


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(heap.sys, "platform", "darwin")
    assert heap.keep_heap() is False
