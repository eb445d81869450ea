"""The stage-backend interface, and which backend runs: ``auto``, ``numpy`` or ``onnxruntime``.

A Backend compiles a range of a model's units into a StageRunner once; the runner then runs frames
into buffers the caller owns (shared-memory ring slots), so no output is ever allocated per frame.
Everything above this wing (stage workers, the in-process bench, Model-level runs) sees only these
two classes, in the way tinygrad's ops_* devices hide which device runs: nothing asks for the name
except the one log line that says which backend was chosen and why.

Backends are imported lazily: choosing ``numpy`` never imports onnxruntime, and a missing
onnxruntime is a one-line ConfigError only when it was asked for by name.
"""
from __future__ import annotations

import importlib
import threading
import weakref
from abc import ABC, abstractmethod

import numpy as np

from ..errors import ConfigError

BACKEND_NAMES = ("auto", "numpy", "onnxruntime")
ORT_HINT = "the onnxruntime backend needs onnxruntime: pip install tunerd[onnx]"

# name -> (module, class); imported on first use so a backend's dependency loads only when chosen
_CLASSES = {"numpy": ("tunerd.backends.numpy_backend", "NumpyBackend"),
            "onnxruntime": ("tunerd.backends.onnxruntime_backend", "OnnxruntimeBackend")}


def where(backend: str, first_unit: int, last_unit: int) -> str:
    """The prefix every backend error carries, so a failure names the stage that failed."""
    return f"{backend} backend, units {first_unit}-{last_unit}"


class StageRunner(ABC):
    """Units first_unit..last_unit of one model, compiled for one backend and thread count.

    Not safe to call from two threads at once (runners keep per-buffer state); one per thread.
    """

    backend: str
    first_unit: int
    last_unit: int
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    # False where run_timed times units apart and they add up to more than run takes (the worker then
    # scales them to the stage's untimed compute, tunerd.pipeline.worker._attribute)
    timed_sums_to_run: bool = True
    # Bytes of weights this runner holds a private copy of (an onnxruntime session's initializers);
    # 0 where it reads the shared, memory-mapped weights file (numpy). What a cache of runners weighs.
    private_bytes: int = 0

    @property
    def n_units(self) -> int:
        return self.last_unit - self.first_unit + 1

    @abstractmethod
    def run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """Write the stage's result for ``x`` into ``out`` (float32, ``output_shape``, C-contiguous)
        and return ``out``. ``x`` is float32 of ``input_shape``; neither is kept after the call."""

    @abstractmethod
    def run_timed(self, x: np.ndarray, out: np.ndarray) -> list[float]:
        """Like run, also timing each unit: one time in seconds per unit, in unit order."""

    def close(self) -> None:
        """Drop what this runner holds (a backend may keep shared compiled state for later compiles)."""

    def __enter__(self) -> "StageRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(units {self.first_unit}-{self.last_unit}, "
                f"{list(self.input_shape)} -> {list(self.output_shape)})")


class Backend(ABC):
    name: str = ""
    # frames between two timed frames a stage should use by default: a backend whose timed run costs
    # more (a chain of per-unit sessions) samples less often, so profiling stays a few % of the period
    profile_every: int = 8

    @classmethod
    def available(cls) -> bool:
        """Whether this backend can run here (its package imports)."""
        return True

    @abstractmethod
    def version(self) -> str:
        """The version of what does the work (numpy's, onnxruntime's), for logs and bench records."""

    def describe(self) -> str:
        """One line for logs: name, version and the options that change speed."""
        return f"{self.name} {self.version()}"

    def memory_budget(self, model) -> int | None:
        """Bytes of private weight copies worth keeping in caches for ``model`` (runners and
        sessions of ranges not running now), or None for no bound (runners that copy nothing)."""
        return None

    def check(self, model) -> None:
        """Raise a ModelError when this backend cannot run ``model`` at all (called at load)."""

    @abstractmethod
    def compile(self, model, first_unit: int = 0, last_unit: int | None = None,
                threads: int = 1) -> StageRunner:
        """A runner for units first_unit..last_unit (inclusive; None = the last unit) on ``threads``
        threads. A bad range or a stage that cannot be built is a ModelError naming both."""

    def __repr__(self) -> str:
        return f"<{self.describe()}>"


def _backend_class(name: str) -> type[Backend]:
    module, cls = _CLASSES[name]
    return getattr(importlib.import_module(module), cls)


_shared: dict[str, Backend] = {}
_shared_lock = threading.Lock()


def _shared_backend(name: str) -> Backend:
    """One instance per name and process, so its compile cache serves every caller."""
    with _shared_lock:
        backend = _shared.get(name)
        if backend is None:
            backend = _shared[name] = _backend_class(name)()
        return backend


def resolve(name: str | None = None) -> tuple[Backend, str]:
    """The backend ``name`` asks for (``auto``/None, ``numpy``, ``onnxruntime``) and one line saying
    why it was chosen, for the caller to log."""
    key = "auto" if name is None else str(name).strip().lower()
    if key not in BACKEND_NAMES:
        raise ConfigError(f"unknown backend {name!r}: choose one of {', '.join(BACKEND_NAMES)}")
    if key == "numpy":
        backend = _shared_backend("numpy")
        return backend, f"backend {backend.describe()}: asked for by name"
    ort_ok = _backend_class("onnxruntime").available()
    if key == "onnxruntime":
        if not ort_ok:
            raise ConfigError(ORT_HINT)
        backend = _shared_backend("onnxruntime")
        return backend, f"backend {backend.describe()}: asked for by name"
    if ort_ok:
        backend = _shared_backend("onnxruntime")
        return backend, f"backend {backend.describe()}: auto, onnxruntime is installed"
    backend = _shared_backend("numpy")
    return backend, (f"backend {backend.describe()}: auto, onnxruntime is not installed "
                     f"(pip install tunerd[onnx] for the faster backend)")


def get_backend(name: str | Backend | None = None) -> Backend:
    """resolve(name)'s backend without the reason; a Backend passes through."""
    if isinstance(name, Backend):
        return name
    return resolve(name)[0]


# model -> {(backend, threads): runner}; weak so a dropped model takes its runners with it
# (runners hold the model's weights and graph, never the Model object itself)
_whole_runners: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def run_model(model, x: np.ndarray, backend: str | Backend | None = None, threads: int = 1) -> np.ndarray:
    """Run the whole model on one frame in this process; returns a new array.

    The runner is kept per (model, backend, threads), so repeated calls compile once. Like
    Model.run, not for concurrent calls from several threads on one model.
    """
    backend = get_backend(backend)
    x = model.check_input(x)
    runners = _whole_runners.setdefault(model, {})
    key = (backend, threads)
    runner = runners.get(key)
    if runner is None:
        runner = runners[key] = backend.compile(model, 0, len(model.units) - 1, threads)
    out = np.empty(runner.output_shape, np.float32)
    runner.run(x, out)
    return out
