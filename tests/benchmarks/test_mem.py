"""benchmarks/_mem.py: each process's own peak memory, not the driver's inherited high-water mark."""

from __future__ import annotations

import importlib.util
import resource
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc")


def _mem():
    spec = importlib.util.spec_from_file_location("_bench_mem", ROOT / "benchmarks" / "_mem.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_small_child_of_a_big_driver_is_measured_small() -> None:
    """The bug of issue 18: ``ru_maxrss`` of children carries the driver's resident size into a child
    that used little (the forked pre-exec copy); ``measure`` reads the child's own VmHWM and PSS."""
    m = _mem()
    big = bytearray(400 * 2**20)  # the driver holds 400 MiB, touched
    big[:: 4096] = b"x" * len(big[:: 4096])
    r = m.measure([sys.executable, "-c", "import time; time.sleep(0.5)"])
    inherited = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    assert r["rc"] == 0
    assert inherited > 380  # what the old method reported for this child
    assert 0 < r["max_hwm_mb"] < 100
    assert 0 < r["peak_pss_mb"] < 100
    del big


def test_child_peak_and_cpu_are_its_own() -> None:
    m = _mem()
    code = ("x = bytearray(300 * 2**20); x[::4096] = b'y' * len(x[::4096]); import time\n"
            "t = time.process_time()\nwhile time.process_time() - t < 0.3: pass\ntime.sleep(0.3)")
    r = m.measure([sys.executable, "-c", code])
    assert r["rc"] == 0
    assert r["max_hwm_mb"] > 290
    assert r["peak_pss_mb"] > 250
    assert r["cpu_s"] >= 0.3
    assert r["wall"] >= r["cpu_s"] * 0.5
