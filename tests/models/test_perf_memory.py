"""curate.models.perf.keep_freed_memory: freed big blocks are reused without page faults (the CPU KD step
re-allocates ~430 MB of gradients and activations per step; benchmarks/bench_distill.py)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# In a child process: the setting is process-wide and irreversible. Minor page faults of a step-like
# pattern: 60 activations of 3 MB allocated, filled and all freed, then the same again (a forward pass).
_CHILD = """
import json, resource, sys
import torch
from curate.models.perf import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "1" else False
def faults():
    acts = [torch.empty(768 * 1024).fill_(1.0) for _ in range(60)]  # 3 MB each, every page touched
    del acts
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    acts = [torch.empty(768 * 1024).fill_(2.0) for _ in range(60)]
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
print(json.dumps({"applied": applied, "faults": min(faults() for _ in range(3))}))
"""


def _faults(keep: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, "1" if keep else "0"], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt is Linux-only")
def test_freed_blocks_are_reused_without_page_faults():
    default, kept = _faults(False), _faults(True)
    # glibc's default trims the freed 180 MB off the heap top (its trim threshold is at most 64 MB): ~45k 4 KiB pages faulted in again
    assert default["faults"] > 10000, default
    assert kept["applied"] is True
    assert kept["faults"] < 200, kept  # reused heap memory: nothing to fault in
