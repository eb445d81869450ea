"""Where a process's threads may run: pin every thread, read back each thread's CPU set.

CPU affinity is per thread on Linux, and a BLAS or onnxruntime pool started before the pinning
keeps the mask it was born with, so pinning means every thread in ``/proc/self/task``. Imports
nothing heavy: a stage worker pins itself before it imports numpy.
"""
from __future__ import annotations

import os

# the variables BLAS libraries read for their thread count when they start (set before numpy loads)
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


def pin_all_threads(cpus) -> int:
    """Pin every thread of this process to ``cpus``; returns how many threads were pinned."""
    cpus = set(cpus)
    pinned = 0
    for name in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(name), cpus)
            pinned += 1
        except ProcessLookupError:
            pass  # the thread exited meanwhile
    os.sched_setaffinity(0, cpus)
    return pinned


def thread_affinities() -> dict[int, list[int]]:
    out = {}
    for name in os.listdir("/proc/self/task"):
        try:
            out[int(name)] = sorted(os.sched_getaffinity(int(name)))
        except ProcessLookupError:
            pass
    return out
