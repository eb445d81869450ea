"""The numpy backend: tunerd's own kernels through Model.plan, the dependency-free reference.

A runner is exactly an ExecutionPlan of the range (what stage workers ran before backends existed):
run writes into ``out`` (a plan binds it as its output buffer where it can, else copies once), and
run_timed reads the clock between units. ``threads`` is accepted and ignored: the plan has no thread
pool of its own, its BLAS calls use the process's, which the stage worker sets with threadpoolctl
when it takes a role (and re-pins when the role's CPUs change).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from .base import Backend, StageRunner, where


class NumpyRunner(StageRunner):
    backend = "numpy"

    def __init__(self, plan, first_unit: int, last_unit: int):
        self.plan = plan
        self.first_unit, self.last_unit = first_unit, last_unit
        self.input_shape = tuple(plan.input_shape)
        self.output_shape = tuple(plan.output_shape)

    def run(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self.plan.run(x, out=out)

    def run_timed(self, x: np.ndarray, out: np.ndarray) -> list[float]:
        return self.plan.run_timed(x, out=out)[1]

    def close(self) -> None:
        self.plan = None


class NumpyBackend(Backend):
    name = "numpy"

    def version(self) -> str:
        return np.__version__

    def describe(self) -> str:
        return f"numpy {np.__version__} (tunerd kernels)"

    def check(self, model) -> None:
        """Refuse a model holding a node no numpy kernel runs (UnsupportedOpError: op, node, and
        "use the onnxruntime backend")."""
        from ..model.ops import check_numpy
        check_numpy(model.graph.nodes, model.graph.weights)

    def compile(self, model, first_unit: int = 0, last_unit: int | None = None,
                threads: int = 1) -> NumpyRunner:
        last_unit = len(model.units) - 1 if last_unit is None else last_unit
        try:
            plan = model.plan(first_unit, last_unit)
        except ModelError as err:
            raise ModelError(f"{where(self.name, first_unit, last_unit)}: {err}") from err
        return NumpyRunner(plan, first_unit, last_unit)
