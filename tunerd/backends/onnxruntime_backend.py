"""The onnxruntime backend: a stage is an InferenceSession on its cut of the model's own export.

- Sessions: CPUExecutionProvider only, sequential execution, ``threads`` intra-op threads and one
  inter-op thread (a stage is one chain of ops; parallelism is the pipeline's business), spinning off
  by default (see DEFAULT_SPINNING), graph optimisation ``all`` by default (see DEFAULT_OPT_LEVEL).
  Each session loads only its units' weights (tunerd.backends.subgraph). Measured on resnet50 at
  224: a session of all 18 units adds 100 MiB resident (97 MiB of weights), one of units 0-8 13 MiB
  (11 MiB of weights), each plus its activations once it has run (14 MiB at 224).
- Zero-copy I/O: the input is bound to the caller's ``x`` memory and the output to the caller's
  ``out`` (an IOBinding over their addresses), so onnxruntime reads the ring slot and its last kernel
  writes the next ring slot. One copy remains where onnxruntime makes it: a stage whose output is
  made by a view op (Flatten, Reshape) gets it copied into ``out`` by that op; in the zoo models
  that is only the pooled features before the classifier (a few KiB). A binding is made once per
  (x, out) address pair and kept (ring slots rotate, so a runner sees the same few pairs over and
  over), at most BINDINGS_KEPT.
- Per-unit times (run_timed) come from a chain of one session per unit, built on the first timed
  call and kept. Its cost: building those sessions once (all 18 units at 224, 1 thread: squeezenet
  86 ms, resnet50 725 ms), a second onnxruntime copy of the range's weights while the chain is kept,
  threads - 1 idle pool threads per unit session, and a slower timed frame: every unit boundary
  re-lays its tensor out of and back into onnxruntime's NCHWc blocks and costs a session call, so the
  units' times add up to more than the range's (measured as above: squeezenet 10.7 ms vs 7.3 for the
  range, resnet50 87 vs 73). They are each unit's cost when it runs alone, not its share of a longer
  stage. The chain's last unit writes ``out``; its result equals the range session's within float
  rounding (1e-5 relative, tested).
- Caches: compiled ranges per (model, first, last, threads, spinning), at most SESSIONS_KEPT, and unit
  sessions of chains, at most UNIT_SESSIONS_KEPT, in the backend object: compiling a range seen
  before builds no new session. Runners share a cached session (onnxruntime's run is thread-safe)
  but each has its own bindings.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict

import numpy as np

from ..errors import ConfigError, ModelError
from .base import Backend, StageRunner, where
from .subgraph import export_of, initializer_bytes, release_freed_memory, release_mapped_pages

# NOTE: measured on a 2-core Xeon (onnxruntime 1.32, whole model at 224, threads 2): spinning gains
# 5-8 % when the session has the cores to itself (squeezenet 180 vs 167 fps, resnet50 18.1 vs 16.7) and
# loses 20-50 % as soon as another busy process shares them (two such sessions at once: squeezenet
# 2 x 56 vs 2 x 107 fps, resnet50 2 x 8.1 vs 2 x 10.3). Pipeline stages share cores with the daemon,
# with each other on one cluster and with emulation, so it is off; with 1 thread it does not matter.
DEFAULT_SPINNING = False
# NOTE: measured as above: ``all`` (NCHWc convolution layouts) over ``extended``: 1 thread squeezenet
# 111 vs 63 fps, resnet50 11.3 vs 7.3; 2 threads 87 vs 71, 17.0 vs 11.1 (the figures of one run).
DEFAULT_OPT_LEVEL = "all"
OPT_LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
              "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}
SESSIONS_KEPT = 8
UNIT_SESSIONS_KEPT = 64
BINDINGS_KEPT = 32
NAME = "onnxruntime"


def _ort():
    import onnxruntime
    return onnxruntime


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


class _Session:
    """One built session and what running it needs; shared by every runner of its range."""

    def __init__(self, session, first: int, last: int, in_shape, out_shape, nbytes: int = 0):
        self.session = session
        self.first, self.last = first, last
        self.nbytes = int(nbytes)          # its initializers: the weights it holds a copy of
        self.input_name = session.get_inputs()[0].name
        self.output_name = session.get_outputs()[0].name
        self.input_shape, self.output_shape = tuple(in_shape), tuple(out_shape)

    def binding(self, x_addr: int, out_addr: int):
        b = self.session.io_binding()
        b.bind_input(self.input_name, "cpu", 0, np.float32, self.input_shape, x_addr)
        b.bind_output(self.output_name, "cpu", 0, np.float32, self.output_shape, out_addr)
        return b


class OnnxruntimeBackend(Backend):
    name = NAME
    # NOTE: a timed frame costs 20-47 % more than a plain one (the per-unit chain, measured on the zoo
    # models at 224); one in 16 keeps sampling under 3 % of a stage's time
    profile_every = 16

    def __init__(self, *, spinning: bool = DEFAULT_SPINNING, opt_level: str = DEFAULT_OPT_LEVEL,
                 prepacking: bool = True, sessions_kept: int = SESSIONS_KEPT):
        # NOTE: ``prepacking=False`` sets session.disable_prepacking; on resnet50 at 224 it changed no
        # session's resident memory (packed weights replace the originals), so it stays on by default
        if opt_level not in OPT_LEVELS:
            raise ConfigError(f"onnxruntime optimisation level {opt_level!r}: choose one of {', '.join(OPT_LEVELS)}")
        self.spinning = bool(spinning)
        self.opt_level = opt_level
        self.prepacking = bool(prepacking)
        self.sessions_kept = max(1, int(sessions_kept))
        self._sessions: OrderedDict = OrderedDict()
        self._unit_sessions: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.sessions_built = 0      # for tests and logs: how often a compile missed the caches
        self.cache_hits = 0

    @classmethod
    def available(cls) -> bool:
        # NOTE: found, not imported: the daemon's main process resolves ``auto`` but never runs a
        # session, and importing onnxruntime there would cost it tens of MiB of resident memory
        import importlib.util
        return importlib.util.find_spec("onnxruntime") is not None

    def version(self) -> str:
        from importlib import metadata
        for dist in ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"):
            try:
                return metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
        return _ort().__version__

    def describe(self) -> str:
        return (f"onnxruntime {self.version()} (CPU, optimisation {self.opt_level}, "
                f"spinning {'on' if self.spinning else 'off'}{'' if self.prepacking else ', prepacking off'})")

    # ------------------------------------------------------------------ sessions
    def options(self, threads: int, spinning: bool):
        ort = _ort()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPT_LEVELS[self.opt_level])
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if not self.prepacking:
            opts.add_session_config_entry("session.disable_prepacking", "1")
        opts.log_severity_level = 3      # its warnings (e.g. unused initializers) are not the user's
        return opts

    def _build(self, export, first: int, last: int, threads: int, spinning: bool) -> _Session:
        ort = _ort()
        try:
            proto = export.cut(first, last)
            nbytes = initializer_bytes(proto)
            data = proto.SerializeToString()
            del proto                     # NOTE: the stage's weights are in ``data`` and in the session
            session = ort.InferenceSession(data, self.options(threads, spinning),
                                           providers=["CPUExecutionProvider"])
        except ModelError as err:
            raise ModelError(f"{where(NAME, first, last)}: {err}") from err
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own Fail/InvalidGraph types
            raise ModelError(f"{where(NAME, first, last)}: cannot create the session: "
                             f"{type(err).__name__}: {err}") from err
        # NOTE: onnxruntime's Python wrapper keeps the model bytes it was given for the life of the
        # session (only to rebuild it on another provider, which a CPU-only session never does): a
        # second copy of the stage's weights, measured +97 MiB on all of resnet50 at 224
        if getattr(session, "_model_bytes", None) is not None:
            session._model_bytes = None
        del data
        release_freed_memory()            # the cut's buffers, freed but still resident otherwise
        release_mapped_pages(export.weights.values())    # the session has its own copy now
        self.sessions_built += 1
        ins, outs = export.ends[first][0], export.ends[last][1]
        return _Session(session, first, last, export.shapes[ins], export.shapes[outs], nbytes)

    def _cached(self, cache: OrderedDict, limit: int, export, first: int, last: int, threads: int,
                spinning: bool) -> _Session:
        key = (export.hash, first, last, threads, spinning)
        with self._lock:
            hit = cache.get(key)
            if hit is not None:
                cache.move_to_end(key)
                self.cache_hits += 1
                return hit
        built = self._build(export, first, last, threads, spinning)   # NOTE: outside the lock (slow)
        budget = export.weight_bytes
        with self._lock:
            built = cache.setdefault(key, built)
            cache.move_to_end(key)
            # NOTE: bounded in count and in the weights the sessions copy (one model's worth), so
            # that a worker through a long search keeps a flat memory; the newest always stays
            while len(cache) > limit or (len(cache) > 1 and sum(s.nbytes for s in cache.values()) > budget):
                cache.popitem(last=False)      # runners still holding it keep it alive
        return built

    def memory_budget(self, model) -> int:
        """One model's weights: what runners of ranges not running now may keep copied."""
        return export_of(model).weight_bytes

    def unit_session(self, export, unit: int, threads: int) -> _Session:
        # NOTE: chain sessions never spin: a unit's pool threads spinning after their run would take
        # the cores from the next unit and make its time wrong
        return self._cached(self._unit_sessions, UNIT_SESSIONS_KEPT, export, unit, unit, threads, False)

    def compile(self, model, first_unit: int = 0, last_unit: int | None = None,
                threads: int = 1) -> "OnnxruntimeRunner":
        last_unit = len(model.units) - 1 if last_unit is None else last_unit
        if not 0 <= first_unit <= last_unit < len(model.units):
            raise ModelError(f"{where(NAME, first_unit, last_unit)}: unit range is outside "
                             f"0-{len(model.units) - 1}")
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ConfigError(f"{where(NAME, first_unit, last_unit)}: threads must be an integer >= 1, "
                              f"got {threads!r}")
        try:
            export = export_of(model)
        except ModelError as err:
            raise ModelError(f"{where(NAME, first_unit, last_unit)}: {err}") from err
        main = self._cached(self._sessions, self.sessions_kept, export, first_unit, last_unit, threads,
                            self.spinning)
        return OnnxruntimeRunner(self, export, main, threads)

    def clear(self) -> None:
        """Forget every cached session (runners keep theirs until closed)."""
        with self._lock:
            self._sessions.clear()
            self._unit_sessions.clear()


class OnnxruntimeRunner(StageRunner):
    timed_sums_to_run = False   # the per-unit chain's times add up to more than the range's
    backend = NAME

    def __init__(self, owner: OnnxruntimeBackend, export, main: _Session, threads: int):
        self._owner, self._export, self._main, self._threads = owner, export, main, threads
        self.first_unit, self.last_unit = main.first, main.last
        self.input_shape, self.output_shape = main.input_shape, main.output_shape
        self._where = where(NAME, main.first, main.last)
        self._bindings: OrderedDict = OrderedDict()
        self._chain: list[_Session] | None = None
        self._between: list[np.ndarray] = []
        self._staging: np.ndarray | None = None

    @property
    def private_bytes(self) -> int:
        """The weights its range session and, once built, its per-unit chain hold copies of."""
        chain = [] if self._chain is None else [s for s in self._chain if s is not self._main]
        return (self._main.nbytes if self._main is not None else 0) + sum(s.nbytes for s in chain)

    @property
    def session(self):
        """The range's InferenceSession (for inspection and tests)."""
        return self._main.session

    def _frames(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        """``x`` as float32 C-contiguous memory of input_shape; ModelErrors say what is wrong."""
        if self._main is None:
            raise ModelError(f"{self._where}: the runner is closed")
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or tuple(out.shape) != self.output_shape \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ModelError(f"{self._where}: out must be a writable C-contiguous float32 array of shape "
                             f"{list(self.output_shape)}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)} {list(getattr(out, 'shape', ()))}")
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or tuple(x.shape) != self.input_shape:
            raise ModelError(f"{self._where}: input must be float32 of shape {list(self.input_shape)}, got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', ()))}")
        if not x.flags.c_contiguous:
            # NOTE: copied into one buffer of this runner, so its address (and binding) stays the same
            if self._staging is None:
                self._staging = np.empty(self.input_shape, np.float32)
            np.copyto(self._staging, x)
            x = self._staging
        return x

    def run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        x = self._frames(x, out)
        key = (_address(x), _address(out))
        binding = self._bindings.get(key)
        if binding is None:
            binding = self._bindings[key] = self._main.binding(*key)
            if len(self._bindings) > BINDINGS_KEPT:
                self._bindings.popitem(last=False)
        try:
            self._main.session.run_with_iobinding(binding)
        except Exception as err:  # noqa: BLE001 - onnxruntime's own exception types
            raise ModelError(f"{self._where}: run failed: {type(err).__name__}: {err}") from err
        return out

    def chain(self) -> list[_Session]:
        """The per-unit sessions of run_timed, built on first use."""
        if self._chain is None:
            if self.n_units == 1 and not self._owner.spinning:
                self._chain = [self._main]      # the range is its own chain
            else:
                self._chain = [self._owner.unit_session(self._export, u, self._threads)
                               for u in range(self.first_unit, self.last_unit + 1)]
            self._between = [np.empty(s.output_shape, np.float32) for s in self._chain[:-1]]
        return self._chain

    def run_timed(self, x: np.ndarray, out: np.ndarray, clock=time.perf_counter) -> list[float]:
        x = self._frames(x, out)
        chain = self.chain()
        times, src = [], x
        for i, unit in enumerate(chain):
            dst = out if i == len(chain) - 1 else self._between[i]
            # NOTE: bound per timed call (a few microseconds per unit, outside the timed span)
            binding = unit.binding(_address(src), _address(dst))
            t0 = clock()
            try:
                unit.session.run_with_iobinding(binding)
            except Exception as err:  # noqa: BLE001
                raise ModelError(f"{where(NAME, unit.first, unit.last)}: run failed (timed, stage units "
                                 f"{self.first_unit}-{self.last_unit}): {type(err).__name__}: {err}") from err
            times.append(clock() - t0)
            src = dst
        return times

    def close(self) -> None:
        self._bindings.clear()
        self._chain, self._between, self._staging = None, [], None
        self._main = None
