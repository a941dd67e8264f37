"""Training keeps the memory a step frees: glibc hands a freed large block back without new page faults."""

import subprocess
import sys

import pytest

# malloc / free through ctypes: the allocator setting itself, without torch's own allocations in between
PROBE = """
import ctypes, resource, sys
from emostream.model.host_memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()  # idempotent
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
size = 64 * 2**20  # above glibc's largest mmap threshold, like a training step's activations
faults = []
for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(max(faults[1:]))
"""


def _faults_after_the_first(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True)
    return int(done.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings: Linux only")
def test_a_freed_large_block_is_reused_without_page_faults() -> None:
    pages = 64 * 2**20 // 4096
    assert _faults_after_the_first("default") > pages // 2  # unmapped on free: every page faults in again
    assert _faults_after_the_first("keep") < pages // 10  # kept: the same pages, already mapped
