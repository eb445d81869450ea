"""The measured cost table: per-unit times from live frames, aggregated online.

Every k-th frame a stage times each of its units (``ExecutionPlan.run_timed``); the pipeline adds
those times here under the key (unit, core type, core count, frequency). The frequency is the
cluster's kHz on a real board, or the effective speed factor on an emulated one (DESIGN.md
"platform"), so measurements at different DVFS states never mix. Each key keeps a running mean and
variance (Welford), so the table is O(keys) however many frames it has seen, can be merged with
another (Chan et al.'s parallel update) and round-trips through JSON.

It starts empty and refines the hints' predictions: ``refine(table)`` returns a copy of a
``UnitCostTable`` with the measured means where there are enough samples.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Union

from ..errors import HintsError

Freq = Union[int, float, None]
Key = tuple[int, str, int, Freq]
FORMAT = 1


class _Any:
    def __repr__(self) -> str:
        return "ANY"


ANY = _Any()   # a query over every frequency (None is a key of its own: frequency unknown)


@dataclass
class RunningStat:
    """Count, mean and sum of squared deviations (Welford's online algorithm)."""

    n: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> None:
        x = float(x)
        self.n += 1
        delta = x - self.mean
        self.mean += delta / self.n
        self.m2 += delta * (x - self.mean)

    def merge(self, other: "RunningStat") -> None:
        """Fold ``other`` in, as if its samples had been added here (Chan et al. 1979)."""
        if other.n == 0:
            return
        if self.n == 0:
            self.n, self.mean, self.m2 = other.n, other.mean, other.m2
            return
        n = self.n + other.n
        delta = other.mean - self.mean
        self.mean += delta * other.n / n
        self.m2 += other.m2 + delta * delta * self.n * other.n / n
        self.n = n

    @property
    def variance(self) -> float:
        """Sample variance (n - 1 in the denominator); 0 below two samples."""
        return self.m2 / (self.n - 1) if self.n > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.variance)

    def copy(self) -> "RunningStat":
        return RunningStat(self.n, self.mean, self.m2)


def _freq(freq: Any) -> Freq:
    if freq is None:
        return None
    if isinstance(freq, bool) or not isinstance(freq, (int, float)):
        raise ValueError(f"frequency must be kHz (int), a speed factor (float) or None, got {freq!r}")
    if isinstance(freq, float):
        if not math.isfinite(freq) or freq <= 0:
            raise ValueError(f"speed factor must be finite and > 0, got {freq!r}")
        return round(freq, 4)
    if freq <= 0:
        raise ValueError(f"frequency must be > 0 kHz, got {freq!r}")
    return int(freq)


def make_key(unit: int, core_type: str, cores: int, freq: Any = None) -> Key:
    if int(unit) != unit or unit < 0:
        raise ValueError(f"unit must be an integer >= 0, got {unit!r}")
    if int(cores) != cores or cores < 1:
        raise ValueError(f"cores must be an integer >= 1, got {cores!r}")
    if not isinstance(core_type, str) or not core_type:
        raise ValueError(f"core type must be a non-empty string, got {core_type!r}")
    return (int(unit), core_type, int(cores), _freq(freq))


class CostTable:
    """Measured ms per (unit, core type, cores, freq): ``add`` samples, ``mean_ms`` to query."""

    def __init__(self) -> None:
        self._stats: dict[Key, RunningStat] = {}

    # ------------------------------------------------------------------ recording
    def add(self, unit: int, core_type: str, cores: int, freq: Any, ms: float) -> None:
        ms = float(ms)
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"a unit time must be finite and >= 0 ms, got {ms!r}")
        key = make_key(unit, core_type, cores, freq)
        stat = self._stats.get(key)
        if stat is None:
            stat = self._stats[key] = RunningStat()
        stat.add(ms)

    def merge(self, other: "CostTable") -> "CostTable":
        """Fold ``other``'s samples into this table (in place); returns self."""
        for key, stat in other._stats.items():
            mine = self._stats.get(key)
            if mine is None:
                self._stats[key] = stat.copy()
            else:
                mine.merge(stat)
        return self

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return len(self._stats)

    def __iter__(self) -> Iterator[tuple[Key, RunningStat]]:
        return iter(sorted(self._stats.items(), key=lambda kv: _sort_key(kv[0])))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CostTable) and self._stats == other._stats

    def stat(self, unit: int, core_type: str, cores: int, freq: Any = ANY) -> RunningStat | None:
        """The statistics of one key; with ``freq=ANY`` (the default) all frequencies pooled (a table
        that only ever saw one frequency state gives the same either way)."""
        if freq is not ANY:
            found = self._stats.get(make_key(unit, core_type, cores, freq))
            return found.copy() if found else None
        pooled = RunningStat()
        for (u, t, c, _), stat in self._stats.items():
            if u == unit and t == core_type and c == cores:
                pooled.merge(stat)
        return pooled if pooled.n else None

    def mean_ms(self, unit: int, core_type: str, cores: int, freq: Any = ANY) -> float | None:
        """Mean measured ms of ``unit`` on ``cores`` cores of ``core_type`` (None if never seen)."""
        stat = self.stat(unit, core_type, cores, freq)
        return stat.mean if stat else None

    def samples(self, unit: int, core_type: str, cores: int, freq: Any = ANY) -> int:
        stat = self.stat(unit, core_type, cores, freq)
        return stat.n if stat else 0

    def refine(self, table: Any, *, min_samples: int = 3, freq: Any = ANY):
        """A copy of ``table`` (a tunerd.costs.table.UnitCostTable) whose predicted ms are replaced by
        measured means wherever this table has at least ``min_samples`` samples."""
        refined = table.copy()
        for core_type, ms in refined.predicted_ms.items():
            for unit in range(ms.shape[0]):
                for cores in range(1, ms.shape[1] + 1):
                    stat = self.stat(unit, core_type, cores, freq)
                    if stat and stat.n >= min_samples and stat.mean > 0:
                        ms[unit, cores - 1] = stat.mean
        return refined

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict:
        return {"format": FORMAT, "entries": [
            {"unit": u, "core_type": t, "cores": c, "freq": f, "n": s.n, "mean_ms": s.mean, "m2": s.m2}
            for (u, t, c, f), s in self]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CostTable":
        table = cls()
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            for e in data["entries"]:
                n, mean, m2 = int(e["n"]), float(e["mean_ms"]), float(e["m2"])
                if n < 1 or not (math.isfinite(mean) and math.isfinite(m2) and m2 >= 0):
                    raise ValueError(f"bad statistics n={n} mean={mean} m2={m2}")
                key = make_key(e["unit"], e["core_type"], e["cores"], e.get("freq"))
                table._stats[key] = RunningStat(n, mean, m2)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise HintsError(f"bad cost table: {err}") from err
        return table

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "CostTable":
        try:
            data = json.loads(text)
        except ValueError as err:
            raise HintsError(f"cost table is not JSON: {err}") from err
        if not isinstance(data, dict):
            raise HintsError("cost table must be a JSON object")
        return cls.from_dict(data)

    def __repr__(self) -> str:
        return f"CostTable({len(self)} keys, {sum(s.n for s in self._stats.values())} samples)"


def _sort_key(key: Key) -> tuple:
    u, t, c, f = key
    return (u, t, c, -1 if f is None else float(f))
