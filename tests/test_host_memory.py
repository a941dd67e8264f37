"""Training keeps the memory a step frees: a second large allocation faults no fresh pages in."""

import subprocess
import sys

import pytest

PROBE = """
import resource, sys
import torch
from emostream.model.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
block = 64 * 2**20 // 4  # 64 MiB of float32, as torch allocates a training step's activations
torch.ones(block)  # allocated, touched and freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(block)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    pages = 64 * 2**20 // 4096
    assert _faults("default") > pages // 2  # glibc unmapped it: every page faults in again
    assert _faults("keep") < pages // 10  # kept in the heap: the same pages, already mapped
