"""Execution plans: a node range bound once to kernels and preallocated buffers.

Building a plan walks the graph once: every tensor gets a slot, every non-view tensor a buffer
(buffers are reused between tensors whose lifetimes do not overlap), every node a bound step.
Running is then a plain loop over the steps with no graph walking, dict lookups or allocation.
"""
from __future__ import annotations

import time

import numpy as np

from . import ops
from .graph import Graph


def _nothing(bufs) -> None:
    pass


class ExecutionPlan:
    """Runs nodes ``first..last`` (inclusive) of a graph: one input tensor in, one tensor out."""

    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]], *, first: int = 0,
                 last: int | None = None, input_name: str | None = None, output_name: str | None = None,
                 unit_ends: list[int] | None = None):
        last = len(graph.nodes) - 1 if last is None else last
        nodes = graph.nodes[first:last + 1]
        ops.check_numpy(nodes, graph.weights)
        self.input_name = input_name or graph.input_name
        self.output_name = output_name or nodes[-1].outputs[0]
        self.input_shape = shapes[self.input_name]
        self.output_shape = shapes[self.output_name]
        weights = graph.weights

        slot: dict[str, int] = {self.input_name: 0}
        for node in nodes:
            for o in node.outputs[:1]:
                slot.setdefault(o, len(slot))
        bufs: list[np.ndarray | None] = [None] * len(slot)

        # liveness: the last node (relative index) reading each tensor; views extend their base
        last_use = {name: -1 for name in slot}
        for j, node in enumerate(nodes):
            for i in node.inputs:
                if i in slot:
                    last_use[i] = j
        last_use[self.output_name] = len(nodes)
        concat_of = self._concat_groups(nodes, shapes)   # producer output -> concat output
        base: dict[str, str] = {self.input_name: self.input_name}
        for node in nodes:
            src = node.inputs[0] if node.inputs else None
            out = node.outputs[0]
            if out in concat_of:
                base[out] = concat_of[out]
            elif node.op in ops.VIEW_OPS and src in base:
                base[out] = base[src]
            else:
                base[out] = out
        base_end: dict[str, int] = {}
        for name, b in base.items():
            base_end[b] = max(base_end.get(b, -1), last_use[name])

        free: dict[int, list[np.ndarray]] = {}
        dying: dict[int, list[str]] = {}
        for b, end in base_end.items():
            dying.setdefault(end, []).append(b)
        phys: dict[str, np.ndarray] = {}
        ws_size = 0
        pending = []

        def allocate(name: str) -> np.ndarray:
            size = int(np.prod(shapes[name]))
            pool = free.get(size)
            arr = pool.pop() if pool else np.empty(size, np.float32)
            phys[name] = arr
            bufs[slot[name]] = arr.reshape(shapes[name])
            return arr

        for j, node in enumerate(nodes):
            out = node.outputs[0]
            in_shapes = [shapes[i] for i in node.inputs if i]
            if out in concat_of:
                # NOTE: written straight into its channel slice of the concat's buffer (N = 1, so the
                # slice is contiguous); the Concat itself then has nothing left to do.
                target = concat_of[out]
                if target not in phys:
                    allocate(target)
                start = sum(shapes[i][1] for i in self._concat_inputs[target][:self._concat_inputs[target].index(out)])
                bufs[slot[out]] = bufs[slot[target]][:, start:start + shapes[out][1]]
            elif node.op == "Concat" and out in self._concat_inputs:
                pass
            elif node.op not in ops.VIEW_OPS:
                allocate(out)
            ws_size = max(ws_size, ops.workspace_size(node, in_shapes))
            pending.append((node, in_shapes))
            for b in dying.get(j, []):
                if b in phys and b != self.input_name:
                    free.setdefault(phys[b].size, []).append(phys[b])
        self.workspace = np.empty(max(ws_size, 1), np.float32)

        self._steps = []
        for node, in_shapes in pending:
            binding = ops.Binding(
                node=node,
                in_slots=[slot[i] for i in node.inputs if i and i not in weights],
                out_slot=slot[node.outputs[0]],
                weights=[weights.get(i) if i in weights else None for i in node.inputs if i],
                in_shapes=in_shapes, out_shape=shapes[node.outputs[0]],
                workspace=self.workspace if ops.workspace_size(node, in_shapes) else None)
            if node.op == "Concat" and node.outputs[0] in self._concat_inputs:
                self._steps.append(_nothing)      # its inputs were written in place
            else:
                self._steps.append(ops.OPS[node.op].bind(binding))
        self._bufs = bufs
        self._in_slot = 0
        self._out_slot = slot[self.output_name]
        self._out_buffer = bufs[self._out_slot]
        self._out_is_view = nodes[-1].op in ops.VIEW_OPS
        # an in-place Concat as the output: its producers write into slices of the caller's ``out``
        self._out_parts: list[tuple[int, int, int]] = []
        if self.output_name in self._concat_inputs:
            start = 0
            for name in self._concat_inputs[self.output_name]:
                width = shapes[name][1]
                self._out_parts.append((slot[name], start, start + width))
                start += width
        self._part_buffers = [bufs[s] for s, _, _ in self._out_parts]
        # step index after which each unit ends (for per-unit timing)
        self.unit_ends = [e - first for e in (unit_ends or [last])]
        self.node_names = [n.name for n in nodes]

    def _concat_groups(self, nodes, shapes) -> dict[str, str]:
        """Concats whose inputs can be produced in place: channel concat of a batch of one, every
        input made by a compute node of this plan and read by nothing else."""
        produced_by = {n.outputs[0]: n for n in nodes}
        readers: dict[str, int] = {}
        for n in nodes:
            for i in n.inputs:
                readers[i] = readers.get(i, 0) + 1
        self._concat_inputs: dict[str, list[str]] = {}
        concat_of: dict[str, str] = {}
        for n in nodes:
            if n.op != "Concat" or len(shapes[n.outputs[0]]) != 4 or shapes[n.outputs[0]][0] != 1:
                continue
            if int(n.attrs.get("axis", 1)) % 4 != 1 or len(set(n.inputs)) != len(n.inputs):
                continue
            ins = list(n.inputs)
            if all(i in produced_by and produced_by[i].op not in ops.VIEW_OPS and produced_by[i].op != "Concat"
                   and readers.get(i) == 1 and i != self.output_name and i not in concat_of for i in ins):
                self._concat_inputs[n.outputs[0]] = ins
                concat_of.update({i: n.outputs[0] for i in ins})
        return concat_of

    def _bind_out(self, x: np.ndarray, out: np.ndarray | None) -> None:
        bufs = self._bufs
        bufs[0] = x
        if out is None or self._out_is_view:
            return
        if not self._out_parts:
            bufs[self._out_slot] = out
        elif out.shape == self.output_shape and out.flags.c_contiguous:
            bufs[self._out_slot] = out
            for s, a, b in self._out_parts:
                bufs[s] = out[:, a:b]
        # else: the result is computed in the plan's buffer and copied into ``out``

    def _unbind_out(self) -> None:
        bufs = self._bufs
        bufs[self._out_slot] = self._out_buffer
        for (s, _, _), buf in zip(self._out_parts, self._part_buffers):
            bufs[s] = buf
        bufs[0] = None

    def run(self, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Run on ``x`` (shape and dtype already checked by the caller). The result lives in a plan
        buffer, valid until the next call, unless ``out`` is given (then it is written there)."""
        bufs = self._bufs
        self._bind_out(x, out)
        try:
            for step in self._steps:
                step(bufs)
            result = bufs[self._out_slot]
            if out is not None and result is not out:
                np.copyto(out, result.reshape(out.shape))
                result = out
            return result
        finally:
            self._unbind_out()

    def run_timed(self, x: np.ndarray, out: np.ndarray | None = None,
                  clock=time.perf_counter) -> tuple[np.ndarray, list[float]]:
        """Like run, also returning seconds spent in each unit of the plan."""
        bufs = self._bufs
        self._bind_out(x, out)
        times, ends = [], self.unit_ends
        try:
            t0 = clock()
            k = 0
            for j, step in enumerate(self._steps):
                step(bufs)
                if j == ends[k]:
                    t1 = clock()
                    times.append(t1 - t0)
                    t0, k = t1, k + 1
            result = bufs[self._out_slot]
            if out is not None and result is not out:
                np.copyto(out, result.reshape(out.shape))
                result = out
            return result, times
        finally:
            self._unbind_out()
