"""Cutting the model's own ONNX export at unit boundaries, for backends that run ONNX.

The export (tunerd.model.onnx_io.export_onnx of the optimised graph) is made once per model and kept
without its weights: each cut takes from the model's weights (memory-mapped from the model cache)
only the initializers its own nodes read, so a stage's session loads its own units' weights and
nothing else, and a worker does not hold a second copy of the whole model between compiles.

A cut is a backward walk from the range's output tensor that stops at its input tensor. Units are
made so that exactly one activation crosses each cut (tunerd.model.units), so that walk finds every
node of the range and nothing before it; a tensor the walk cannot place is a ModelError, not a
silently larger stage.
"""
from __future__ import annotations

import ctypes
import threading
from collections import OrderedDict

import numpy as np

from ..errors import ModelError

EXPORTS_KEPT = 2      # models whose weightless export is kept (a worker serves one model)


class Export:
    """One model's ONNX export, weightless; ``cut`` makes the ModelProto of a unit range."""

    def __init__(self, model):
        from ..model.onnx_io import export_onnx
        import onnx
        # NOTE: weightless: exporting with the weights read every page of the mapped weights file
        # into this process (measured alexnet at 224: +230 MiB resident in every stage worker)
        proto = export_onnx(model.graph, with_weights=False)
        weights = model.graph.weights
        # NOTE: copied into a fresh message so that dropping ``proto`` frees the weight bytes of the
        # export (protobuf keeps a message's whole arena alive while any part of it is referenced)
        skeleton = onnx.GraphProto()
        skeleton.node.extend(proto.graph.node)
        skeleton.initializer.extend(t for t in proto.graph.initializer if t.name not in weights)
        self.opsets = [(o.domain, o.version) for o in proto.opset_import]
        self.ir_version = proto.ir_version
        del proto
        self.name, self.hash = model.name, model.hash
        self.nodes = skeleton.node
        self._skeleton = skeleton
        self.small = {t.name: t for t in skeleton.initializer}   # constants the export added
        self.weights = weights
        self.weight_bytes = int(sum(w.nbytes for w in weights.values()))
        self.producer = {o: i for i, n in enumerate(skeleton.node) for o in n.output}
        self.ends = [(u.input, u.output) for u in model.units]
        self.shapes = {t: tuple(model.shapes[t]) for pair in self.ends for t in pair}
        release_freed_memory()

    def cut(self, first_unit: int, last_unit: int):
        """The ModelProto of units first_unit..last_unit: their nodes and only their initializers."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper
        src, dst = self.ends[first_unit][0], self.ends[last_unit][1]
        picked, inits, seen = set(), [], set()
        need = [dst]
        while need:
            t = need.pop()
            if not t or t == src or t in seen:
                continue
            seen.add(t)
            if t in self.weights or t in self.small:
                inits.append(t)
                continue
            i = self.producer.get(t)
            if i is None:
                raise ModelError(f"tensor {t!r} is read inside the range but not made in it "
                                 f"(it does not start at {src!r})")
            picked.add(i)
            need.extend(self.nodes[i].input)
        initializers = []
        for name in sorted(inits):
            if name in self.weights:
                w = self.weights[name]
                # NOTE: a 0-d constant (a scalar index) as it is: ascontiguousarray would make it 1-d
                initializers.append(numpy_helper.from_array(np.ascontiguousarray(w) if w.ndim else np.asarray(w),
                                                            name=name))
            else:
                initializers.append(self.small[name])
        graph = helper.make_graph(
            [self.nodes[i] for i in sorted(picked)], f"{self.name}_units_{first_unit}_{last_unit}",
            [helper.make_tensor_value_info(src, TensorProto.FLOAT, list(self.shapes[src]))],
            [helper.make_tensor_value_info(dst, TensorProto.FLOAT, list(self.shapes[dst]))],
            initializer=initializers)
        proto = helper.make_model(graph, producer_name="tunerd",
                                  opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in self.opsets])
        proto.ir_version = self.ir_version
        return proto


def release_mapped_pages(arrays) -> None:
    """Drop from this process the resident pages of the memory-mapped files ``arrays`` view.

    A session holds its own copy of the weights once it is built, so the mapped pages that the cut
    read are not needed by it any more; ``MADV_DONTNEED`` on a read-only file mapping only unmaps
    them here (they stay in the page cache, and a later read faults them back in). Arrays not backed
    by a mapping are left alone."""
    import mmap
    seen = set()
    for a in arrays:
        base = a
        while base is not None and not isinstance(base, np.memmap) and isinstance(base, np.ndarray):
            base = base.base
        mm = getattr(base, "_mmap", None)
        if mm is None or id(mm) in seen or not hasattr(mm, "madvise"):
            continue
        seen.add(id(mm))
        try:
            mm.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):
            pass


def release_freed_memory() -> None:
    """Give freed heap pages back to the system (glibc only; elsewhere nothing).

    Exports and cuts allocate weight-sized buffers of a few MiB, under glibc's mmap threshold, so
    they come from the heap and stay in the process's RSS after they are freed: measured on resnet50
    at 224, the weightless export left 400 MiB resident until malloc_trim returned it."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _trim = False
    if _trim:
        _trim(0)


_trim = None
_exports: "OrderedDict[str, Export]" = OrderedDict()
_lock = threading.Lock()


def export_of(model) -> Export:
    """The model's Export, made on first use and kept for the next EXPORTS_KEPT - 1 other models.

    Keyed by the model's content hash, so every Model object of the same stored model shares one."""
    with _lock:
        exp = _exports.get(model.hash)
        if exp is not None:
            _exports.move_to_end(model.hash)
            return exp
    exp = Export(model)          # NOTE: outside the lock: exporting a large model takes a second
    with _lock:
        exp = _exports.setdefault(model.hash, exp)
        _exports.move_to_end(model.hash)
        while len(_exports) > EXPORTS_KEPT:
            _exports.popitem(last=False)
    return exp


def initializer_bytes(proto, names=None) -> int:
    """Bytes of the proto's initializers (only those in ``names`` if given): what a session loads."""
    from onnx import helper
    return sum(int(np.prod(t.dims, dtype=np.int64)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in proto.graph.initializer if names is None or t.name in names)
