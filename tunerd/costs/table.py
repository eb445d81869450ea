"""The unit cost table: what each unit costs on each (core type, core count), as the tuning wing reads it.

The costs wing produces it (hints turn into one with ``Hints.to_table``) and the tuning wing consumes it
(the DSE, the tuner's surrogate and the simulator), so it lives here, on the producer's side: costs never
has to import tuning. ``cores_column`` is the one lookup of a core count's column, shared with the hints
so both name the same errors the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..errors import ConfigError, HintsError
from ..pipeconfig import ClusterSpec

__all__ = ["UnitCostTable", "cores_column"]


def cores_column(predicted_ms: Mapping[str, np.ndarray], core_type: str, cores: int,
                 error: type[Exception], source: str) -> np.ndarray:
    """Column ``cores - 1`` of ``predicted_ms[core_type]`` (units x core counts), a view; ``error``
    names ``source`` when that core type or count is not covered."""
    try:
        arr = predicted_ms[core_type]
    except KeyError:
        raise error(f"{source} has no core type {core_type!r} (have {', '.join(predicted_ms)})") from None
    if not 1 <= cores <= arr.shape[1]:
        raise error(f"{source} covers 1-{arr.shape[1]} cores of {core_type!r}, not {cores}")
    return arr[:, cores - 1]


@dataclass
class UnitCostTable:
    """Per-unit costs: ``predicted_ms[core_type][u, k]`` = ms of unit u on k+1 cores of that type,
    ``out_bytes[u]`` = bytes crossing the cut after unit u (the last one is the output)."""

    predicted_ms: dict[str, np.ndarray]
    out_bytes: np.ndarray

    def __post_init__(self) -> None:
        self.out_bytes = np.asarray(self.out_bytes, dtype=float).reshape(-1)
        n = self.out_bytes.shape[0]
        if n < 1:
            raise HintsError("unit cost table has no units")
        if not self.predicted_ms:
            raise HintsError("unit cost table has no core types")
        table = {}
        for core_type, ms in self.predicted_ms.items():
            arr = np.asarray(ms, dtype=float)
            if arr.ndim != 2 or arr.shape[0] != n or arr.shape[1] < 1:
                raise HintsError(
                    f"predicted ms for core type {core_type!r} has shape {arr.shape}, expected ({n}, cores)")
            if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise HintsError(f"predicted ms for core type {core_type!r} must be finite and > 0")
            table[str(core_type)] = arr
        if np.any(self.out_bytes < 0) or not np.all(np.isfinite(self.out_bytes)):
            raise HintsError("out_bytes must be finite and >= 0")
        self.predicted_ms = table

    @property
    def n_units(self) -> int:
        return int(self.out_bytes.shape[0])

    @property
    def core_types(self) -> list[str]:
        return list(self.predicted_ms)

    def max_cores(self, core_type: str) -> int:
        return int(self.predicted_ms[core_type].shape[1])

    def ms(self, core_type: str, cores: int) -> np.ndarray:
        """Per-unit ms on ``cores`` cores of ``core_type`` (a view)."""
        return cores_column(self.predicted_ms, core_type, cores, ConfigError, "the unit cost table")

    def scaled(self, factors: Mapping[str, float]) -> "UnitCostTable":
        """A copy with each core type's times multiplied by ``factors.get(core_type, 1)``."""
        return UnitCostTable({t: ms * float(factors.get(t, 1.0)) for t, ms in self.predicted_ms.items()},
                             self.out_bytes.copy())

    def copy(self) -> "UnitCostTable":
        return UnitCostTable({t: ms.copy() for t, ms in self.predicted_ms.items()}, self.out_bytes.copy())

    @classmethod
    def from_hints(cls, hints: Any) -> "UnitCostTable":
        """The table of a hints object (anything with ``.predicted_ms`` and ``.out_bytes``)."""
        if isinstance(hints, UnitCostTable):
            return hints
        try:
            return cls(dict(hints.predicted_ms), hints.out_bytes)
        except AttributeError as err:
            raise HintsError(f"hints have no unit cost table: {err}") from err

    def to_dict(self) -> dict:
        return {"predicted_ms": {t: ms.tolist() for t, ms in self.predicted_ms.items()},
                "out_bytes": self.out_bytes.tolist()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "UnitCostTable":
        try:
            return cls({t: np.asarray(v, dtype=float) for t, v in data["predicted_ms"].items()},
                       np.asarray(data["out_bytes"], dtype=float))
        except (KeyError, TypeError, AttributeError, ValueError) as err:
            raise HintsError(f"bad unit cost table: {err}") from err

    def check_clusters(self, clusters: Sequence[ClusterSpec]) -> None:
        for c in clusters:
            if c.core_type not in self.predicted_ms:
                raise HintsError(f"cluster {c.name!r}: no costs for core type {c.core_type!r}"
                                 f" (table has {', '.join(self.predicted_ms)})")
            if self.max_cores(c.core_type) < c.cores:
                raise HintsError(f"cluster {c.name!r} has {c.cores} cores but the table has costs for"
                                 f" 1-{self.max_cores(c.core_type)} cores of {c.core_type!r}")
