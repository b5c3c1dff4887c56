"""bnn_helpers.runtime.reuse_freed_memory: freed tensor memory is reused, not faulted in again."""
import platform
import subprocess
import sys

import pytest

PROBE = """
import resource, sys, torch
from bnn_helpers.runtime import reuse_freed_memory
if sys.argv[1] == "reuse":
    assert reuse_freed_memory()
# 64 MB, freed at once, a few times: a steady state like a training loop's (an aligned
# request cannot reuse a freed block of exactly its own size, two coalesced ones it can)
for _ in range(3):
    torch.ones(16 * 2**20).sum()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20).sum()                  # the same size again
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
PAGES = 64 * 2**20 // 4096


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                         check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_freed_tensor_memory_is_reused_instead_of_faulted_in_again():
    # glibc's default: a 64 MB block is mmapped and unmapped, so every page faults again.
    assert _faults("default") > PAGES * 0.9
    assert _faults("reuse") < PAGES * 0.1
