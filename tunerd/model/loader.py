"""Model: a loaded, optimised CNN with its units, stored once on disk and mapped by every process.

``load_model`` builds the graph (zoo builder or ONNX import), runs the load-time passes, infers
shapes, splits units, and stores the result in the model cache (``graph.json`` + one weights file),
keyed by content hash. Weights are then memory-mapped read-only from that file, so stage worker
processes that ``Model.open(model.path)`` share one copy in memory.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from . import passes
from ..errors import ModelError
from ..files import atomic_write_text
from .graph import Graph, Node
from .plan import ExecutionPlan
from .units import Unit, split_units
from .weights import open_weights, write_weights

log = logging.getLogger(__name__)

GRAPH_FILE = "graph.json"
WEIGHTS_FILE = "weights.bin"


def cache_dir() -> Path:
    env = os.environ.get("TUNERD_CACHE_DIR")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tunerd"


def check_frame(x, shape: tuple[int, ...]) -> np.ndarray:
    """``x`` if it is a float32 numpy array of ``shape``, else a ModelError saying what is wrong."""
    if not isinstance(x, np.ndarray):
        raise ModelError(f"input must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise ModelError(f"input dtype must be float32, got {x.dtype}")
    if tuple(x.shape) != tuple(shape):
        raise ModelError(f"input shape must be {list(shape)}, got {list(x.shape)}")
    return x


class Model:
    def __init__(self, graph: Graph, *, path: Path | None = None, source: str | None = None,
                 content_hash: str | None = None):
        self.graph = graph
        self.source = source or graph.name
        self.shapes = passes.infer_shapes(graph)
        self.units: list[Unit] = split_units(graph, self.shapes)
        self.hash = content_hash or graph.content_hash()
        self.path = path
        self._plan: ExecutionPlan | None = None
        self._backend = None        # None: run() uses the numpy plan (the reference)
        self._whole = None          # the backend's runner of all units, made on the first run()

    # ------------------------------------------------------------------ identity
    @property
    def name(self) -> str:
        return self.graph.name

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.graph.input_shape)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.shapes[self.graph.output_name]

    @property
    def flops(self) -> int:
        return sum(u.flops for u in self.units)

    @property
    def weight_bytes(self) -> int:
        return sum(int(w.nbytes) for w in self.graph.weights.values())

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, input={self.input_shape}, nodes={len(self.graph.nodes)}, "
                f"units={len(self.units)}, gflops={self.flops / 1e9:.2f})")

    # ------------------------------------------------------------------ execution
    def check_input(self, x) -> np.ndarray:
        return np.ascontiguousarray(check_frame(x, self.input_shape))

    def plan(self, first_unit: int = 0, last_unit: int | None = None) -> ExecutionPlan:
        """An execution plan for units first_unit..last_unit (inclusive)."""
        last_unit = len(self.units) - 1 if last_unit is None else last_unit
        if not 0 <= first_unit <= last_unit < len(self.units):
            raise ModelError(f"unit range {first_unit}-{last_unit} is outside 0-{len(self.units) - 1}")
        first, last = self.units[first_unit], self.units[last_unit]
        return ExecutionPlan(self.graph, self.shapes, first=first.first, last=last.last,
                             input_name=first.input, output_name=last.output,
                             unit_ends=[u.last for u in self.units[first_unit:last_unit + 1]])

    @property
    def backend(self) -> str:
        """The name of the backend run() uses (``numpy`` unless use_backend chose another)."""
        return self._backend.name if self._backend is not None else "numpy"

    def use_backend(self, backend) -> "Model":
        """Make run() go through ``backend``: anything with ``name`` and ``compile(model, first_unit,
        last_unit, threads)`` returning a runner with ``output_shape`` and ``run(x, out)`` (a
        tunerd.backends Backend; this wing does not import that one). None: the numpy plan again."""
        self._backend, self._whole = backend, None
        return self

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run the whole model in this process on its backend (the numpy plan by default: the
        reference). Returns a new array."""
        x = self.check_input(x)
        if self._backend is not None:
            if self._whole is None:
                self._whole = self._backend.compile(self, 0, len(self.units) - 1, 1)
            out = np.empty(self._whole.output_shape, np.float32)
            return self._whole.run(x, out)
        if self._plan is None:
            self._plan = self.plan()
        return self._plan.run(x).copy()

    # ------------------------------------------------------------------ storage
    def save(self, directory: str | os.PathLike) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_weights(directory / WEIGHTS_FILE, self.graph.weights)
        meta = {"format": 1, "source": self.source, "hash": self.hash, "graph": self.graph.structure_dict()}
        atomic_write_text(directory / GRAPH_FILE, json.dumps(meta))
        return directory

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "Model":
        """Open a stored model; its weights are mapped read-only, not read."""
        directory = Path(directory)
        try:
            meta = json.loads((directory / GRAPH_FILE).read_text())
        except (OSError, ValueError) as err:
            raise ModelError(f"cannot open stored model in {directory}: {err}") from err
        g = meta["graph"]
        weights = open_weights(directory / WEIGHTS_FILE)
        graph = Graph(g["name"], g["input_name"], tuple(g["input_shape"]), g["output_name"],
                      [Node.from_dict(n) for n in g["nodes"]], weights, opset=int(g.get("opset", 13)))
        return cls(graph, path=directory, source=meta.get("source"), content_hash=meta.get("hash"))


def _build_graph(source: str, input_size: int | None) -> Graph:
    if source.startswith("zoo:"):
        from . import zoo
        return zoo.build(source[4:], input_size=input_size)
    path = Path(source)
    if path.is_dir() and (path / GRAPH_FILE).exists():
        raise ModelError("a stored model directory is opened with Model.open, not built")
    if not path.exists():
        raise ModelError(f"model {source!r} not found (expected an .onnx file or zoo:NAME)")
    from . import onnx_io
    return onnx_io.import_onnx(path, input_size=input_size)


def load_model(source: str | os.PathLike, *, input_size: int | None = None, store: bool = True) -> Model:
    """Load ``zoo:NAME`` or an ``.onnx`` file; ``input_size`` (H = W) shrinks the input for tests.

    With ``store`` (the default) the optimised model is kept in the model cache and its weights are
    mapped from there, so other processes can open the same copy by ``model.path``.
    """
    source = os.fspath(source)
    if input_size is not None and (int(input_size) != input_size or input_size < 8):
        raise ModelError(f"input_size must be an integer >= 8, got {input_size!r}")
    path = Path(source)
    if path.is_dir() and (path / GRAPH_FILE).exists():
        return Model.open(path)
    graph = passes.optimize(_build_graph(source, input_size))
    model = Model(graph, source=source)
    if not store:
        return model
    target = cache_dir() / "models" / model.hash[:20]
    if not (target / GRAPH_FILE).exists():
        log.info("storing %s in %s", source, target)
        try:
            model.save(target)
        except OSError as err:
            raise ModelError(f"cannot store the optimised model in {target}: {err.strerror or err} "
                             f"(TUNERD_CACHE_DIR names another place)") from err
    stored = Model.open(target)
    stored.source = source
    return stored
