"""numba start-up without SciPy: curate's kernels (MinHash, suffix arrays) need no BLAS.

The first compile or cache load of any numba function in a process loads numba's CPU registries
(``numba.core.cpu.CPUContext.load_additional_registries``), which import ``numba.np.arraymath``; that
module probes for BLAS at import (``_HAVE_BLAS = _check_blas()``, ``numba/np/arraymath.py``) by importing
``scipy.linalg.cython_blas``, and importing ``scipy.linalg`` costs 0.3-0.4 CPU-s, a fifth of a 20k-document
MinHash run's start-up. :func:`prepare` does that registry load once with ``scipy.linalg`` hidden, so the
probe finds no BLAS and SciPy is never imported for curate's kernels.

What that changes for other numba code in the same process: only ``_HAVE_BLAS``, which picks the inner
product of numba's ``np.convolve``/``np.correlate`` (a plain loop instead of BLAS ``dot``: same results).
``np.dot``, ``@`` and ``np.linalg`` call ``ensure_blas`` when they are compiled and import SciPy then, as
usual. Nothing is hidden when SciPy's linalg is already imported (then the probe is free) or numba's
registries are already loaded.

Exit: once numba's registries are loaded (~130k objects the cyclic GC tracks), the collections Python runs
while it shuts down cost 0.3-0.4 CPU-s per process (measured: 1.37 CPU-s at the last line of a script
that loaded the MinHash kernels, 1.81 at exit; ``gc_collect_main`` was 19% of its perf samples), more
than a 20k-document MinHash run's clustering. :func:`freeze_gc_at_exit` registers ``gc.freeze`` with
``atexit``, so those collections skip every object (exit then costs 0.03 CPU-s). What that changes:
objects that are garbage only through a reference cycle when the interpreter exits are not finalised by
the GC. That is safe only in a process whose every object is curate's (curate closes its own files before
a run returns), so it is called by curate's pool workers and the ``curate`` command, never by importing or
running curate from a user's own script, whose objects (an unflushed file in a cycle) it would touch too.
"""

from __future__ import annotations

import atexit
import gc
import sys
import threading

_LOCK = threading.Lock()
_DONE = False


class _HideScipyLinalg:
    """A meta-path finder that makes ``import scipy.linalg`` (and its submodules) fail while installed."""

    def find_spec(self, name: str, path=None, target=None):  # noqa: ANN001, ANN201 (importlib protocol)
        if name == "scipy.linalg" or name.startswith("scipy.linalg."):
            raise ModuleNotFoundError(f"hidden while numba loads its registries: {name}", name=name)
        return None


def prepare() -> None:
    """Load numba's CPU registries now, without importing SciPy (see the module docstring). Idempotent."""
    global _DONE
    if _DONE:
        return
    with _LOCK:
        if _DONE:
            return
        from numba.core.registry import cpu_target

        hide = "scipy.linalg" not in sys.modules and "numba.np.arraymath" not in sys.modules
        finder = _HideScipyLinalg()
        if hide:
            sys.meta_path.insert(0, finder)
        try:
            cpu_target.target_context.refresh()  # what the first dispatch would do (numba/core/base.py)
        finally:
            if hide:
                sys.meta_path.remove(finder)
        _DONE = True


_FREEZE_AT_EXIT = False


def freeze_gc_at_exit() -> None:
    """Skip Python's exit-time GC collections in this process (see the module docstring). Only for
    processes curate owns: its pool workers and the ``curate`` command. Idempotent."""
    global _FREEZE_AT_EXIT
    if not _FREEZE_AT_EXIT:
        atexit.register(gc.freeze)
        _FREEZE_AT_EXIT = True
