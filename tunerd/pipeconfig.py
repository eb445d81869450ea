"""Pipeline configs: stages over units, their canonical text form, validation and CPU assignment.

Canonical text (DESIGN.md): each stage is ``FIRST-LAST@CLUSTER:CORES`` or
``FIRST-LAST@CLUSTER:CORESxREPLICAS`` (units FIRST..LAST inclusive), stages joined by `` | `` in
pipeline order, e.g. ``0-5@big:2x2 | 6-17@little:4``. ``str(config)`` is canonical and
``parse_config(str(config)) == config``; the parser also accepts extra whitespace and ``x1``.

CORES counts physical cores: a cluster's ``cpus`` hold one hardware thread per core (discovery puts
the other SMT threads in ``smt_siblings``), so assign_cpus pins a stage of N cores to N cores, one
thread each (DESIGN.md, "core").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .errors import ConfigError

__all__ = [
    "ClusterSpec", "Stage", "PipelineConfig", "parse_config", "format_config", "validate",
    "as_cluster_specs", "assign_cpus", "host_cpus",
]


@dataclass(frozen=True)
class ClusterSpec:
    """What the search needs of a cluster. ``speed`` stretches compute time by 1/speed (DVFS)."""

    name: str
    core_type: str
    cores: int
    speed: float = 1.0


def _cluster_cores(cluster: Any) -> int:
    cores = getattr(cluster, "cores", None)
    if cores is None:
        cpus = getattr(cluster, "cpus", None)
        if cpus is None:
            raise ConfigError(f"cluster {getattr(cluster, 'name', cluster)!r} has neither .cores nor .cpus")
        return len(cpus)
    return int(cores)


def as_cluster_specs(clusters: Iterable[Any]) -> list[ClusterSpec]:
    """ClusterSpecs from anything with ``.name``, ``.core_type`` and ``.cores`` or ``.cpus``."""
    specs = []
    for c in clusters:
        if isinstance(c, ClusterSpec):
            specs.append(c)
            continue
        if not hasattr(c, "name") or not hasattr(c, "core_type"):
            raise ConfigError(f"a cluster needs .name and .core_type, got {c!r}")
        speed = getattr(c, "speed", 1.0)
        specs.append(ClusterSpec(str(c.name), str(c.core_type), _cluster_cores(c),
                                 float(speed) if isinstance(speed, (int, float)) else 1.0))
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate cluster names: {', '.join(names)}")
    if not specs:
        raise ConfigError("no clusters")
    for s in specs:
        if s.cores < 1:
            raise ConfigError(f"cluster {s.name!r} has {s.cores} cores")
    return specs


@dataclass(frozen=True)
class Stage:
    """Units ``first..last`` (inclusive) on ``cores`` cores of ``cluster``, ``replicas`` copies."""

    first: int
    last: int
    cluster: str
    cores: int
    replicas: int = 1

    def __str__(self) -> str:
        text = f"{self.first}-{self.last}@{self.cluster}:{self.cores}"
        return text if self.replicas == 1 else f"{text}x{self.replicas}"

    @property
    def n_units(self) -> int:
        return self.last - self.first + 1

    @property
    def total_cores(self) -> int:
        return self.cores * self.replicas


@dataclass(frozen=True)
class PipelineConfig:
    """Ordered stages of a pipeline; frozen and hashable (usable as a cache key)."""

    stages: tuple[Stage, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(self.stages))

    def __str__(self) -> str:
        return format_config(self)

    def __len__(self) -> int:
        return len(self.stages)

    def __iter__(self):
        return iter(self.stages)

    @property
    def n_units(self) -> int:
        return self.stages[-1].last + 1 if self.stages else 0

    @property
    def cuts(self) -> tuple[int, ...]:
        """Exclusive end unit of every stage but the last (the cut positions)."""
        return tuple(s.last + 1 for s in self.stages[:-1])


def format_config(config: PipelineConfig) -> str:
    return " | ".join(str(s) for s in config.stages)


_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.\-]*"
# NOTE: ASCII: without it \d and \s take any Unicode digit or space ('٠-١٧@big:٤' parsed)
_STAGE_RE = re.compile(
    rf"\s*(\d+)\s*-\s*(\d+)\s*@\s*({_NAME})\s*:\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", re.ASCII
)
_CLUSTER_NAME_RE = re.compile(_NAME, re.ASCII)
_FORM = "FIRST-LAST@CLUSTER:CORES or FIRST-LAST@CLUSTER:CORESxREPLICAS"


def is_cluster_name(name: str) -> bool:
    """Whether ``name`` can stand for a cluster in the config text (``0-9@NAME:4``)."""
    return isinstance(name, str) and _CLUSTER_NAME_RE.fullmatch(name) is not None


def parse_config(text: str) -> PipelineConfig:
    """Parse the canonical text form (whitespace-tolerant). Raises ConfigError naming the place."""
    if not isinstance(text, str):
        raise ConfigError(f"pipeline config must be text, not {type(text).__name__}")
    if not text.strip():
        raise ConfigError("empty pipeline config")
    stages = []
    offset = 0
    for index, piece in enumerate(text.split("|"), start=1):
        column = offset + len(piece) - len(piece.lstrip()) + 1
        offset += len(piece) + 1
        if not piece.strip():
            raise ConfigError(f"empty stage {index} at column {column} in {text!r}")
        m = _STAGE_RE.fullmatch(piece)
        if m is None:
            raise ConfigError(
                f"bad stage {index} {piece.strip()!r} at column {column}: expected {_FORM}")
        first, last, cluster, cores, replicas = m.groups()
        stages.append(Stage(int(first), int(last), cluster, int(cores),
                            int(replicas) if replicas is not None else 1))
    return PipelineConfig(tuple(stages))


def validate(config: PipelineConfig, n_units: int, clusters: Sequence[Any]) -> PipelineConfig:
    """Check ``config`` covers units 0..n_units-1 exactly once and fits ``clusters``; return it."""
    specs = {c.name: c for c in as_cluster_specs(clusters)}
    stages = config.stages
    if not stages:
        raise ConfigError("pipeline config has no stages")
    for i, s in enumerate(stages, start=1):
        where = f"stage {i} ({s})"
        if s.first < 0:
            raise ConfigError(f"{where}: unit {s.first} is negative")
        if s.first > s.last:
            raise ConfigError(f"{where}: first unit {s.first} is after last unit {s.last}")
        if s.cores < 1:
            raise ConfigError(f"{where}: cores must be >= 1, got {s.cores}")
        if s.replicas < 1:
            raise ConfigError(f"{where}: replicas must be >= 1, got {s.replicas}")
        if s.cluster not in specs:
            raise ConfigError(
                f"{where}: unknown cluster {s.cluster!r} (clusters: {', '.join(specs)})")
        have = specs[s.cluster].cores
        if s.total_cores > have:
            raise ConfigError(
                f"{where} needs {s.total_cores} cores but cluster {s.cluster!r} has {have}")
    if stages[0].first != 0:
        raise ConfigError(
            f"stage 1 ({stages[0]}) starts at unit {stages[0].first}: units 0-{stages[0].first - 1}"
            " are not covered")
    for i in range(1, len(stages)):
        prev, s = stages[i - 1], stages[i]
        pair = f"stage {i} ({prev}) and stage {i + 1} ({s})"
        if s.first < prev.first:
            raise ConfigError(f"stages out of order: stage {i + 1} ({s}) starts before stage {i} ({prev})")
        if s.first <= prev.last:
            raise ConfigError(f"overlap: units {s.first}-{min(prev.last, s.last)} are in both {pair}")
        if s.first > prev.last + 1:
            raise ConfigError(f"gap: units {prev.last + 1}-{s.first - 1} between {pair} are not covered")
    last = stages[-1].last
    if last >= n_units:
        raise ConfigError(
            f"stage {len(stages)} ({stages[-1]}) ends at unit {last} but the model has {n_units} units"
            f" (0-{n_units - 1})")
    if last < n_units - 1:
        raise ConfigError(
            f"units {last + 1}-{n_units - 1} are not covered (the model has {n_units} units)")
    used: dict[str, list[int]] = {}
    for i, s in enumerate(stages, start=1):
        used.setdefault(s.cluster, []).append(i)
    for name, idx in used.items():
        total = sum(stages[i - 1].total_cores for i in idx)
        if total > specs[name].cores:
            raise ConfigError(
                f"overlapping cores: stages {', '.join(map(str, idx))} use {total} cores of cluster"
                f" {name!r} which has {specs[name].cores}")
    return config


def _cluster_cpu_ids(clusters: Sequence[Any]) -> dict[str, list[int]]:
    """CPU ids per cluster name: ``.cpus`` where a cluster has them, else consecutive ids after the
    previous clusters' (0.. for the first)."""
    cpu_lists: dict[str, list[int]] = {}
    next_id = 0
    for c in clusters:
        cpus = getattr(c, "cpus", None)
        if cpus is not None:
            ids = [int(x) for x in cpus]
        else:
            ids = list(range(next_id, next_id + int(c.cores)))
        next_id = max(ids, default=next_id - 1) + 1
        cpu_lists[c.name] = ids
    return cpu_lists


def assign_cpus(config: PipelineConfig, clusters: Sequence[Any]) -> list[list[tuple[int, ...]]]:
    """Concrete CPU ids per stage and per replica: allocated in cluster order, disjoint.

    Clusters with ``.cpus`` use those ids; a cluster with only ``.cores`` gets consecutive ids after
    the previous clusters' (0.. for the first).
    """
    cpu_lists = _cluster_cpu_ids(clusters)
    validate(config, config.n_units, clusters)
    cursor = {name: 0 for name in cpu_lists}
    out = []
    for s in config.stages:
        ids = cpu_lists[s.cluster]
        replicas = []
        for _ in range(s.replicas):
            start = cursor[s.cluster]
            replicas.append(tuple(ids[start:start + s.cores]))
            cursor[s.cluster] = start + s.cores
        out.append(replicas)
    return out


def host_cpus(config: PipelineConfig, clusters: Sequence[Any],
              periods: Sequence[float] | None = None) -> tuple[int, ...]:
    """CPUs for the process that feeds the pipeline (the daemon's own threads), where its work
    (sockets, copies in and out) takes the least from the stages.

    The platform's CPUs that no stage uses, if there are any; else the CPUs of the stage with the
    most slack, i.e. the shortest ``periods[i]`` (stage i's time per frame, replicas accounted):
    a core the bottleneck stage computes on is the one place the feeder must not compete for.
    Empty when neither is known (no free CPU, no periods): leave the process where it is.
    """
    sets = assign_cpus(config, clusters)
    used = {cpu for stage in sets for replica in stage for cpu in replica}
    free = tuple(sorted({cpu for ids in _cluster_cpu_ids(clusters).values() for cpu in ids} - used))
    if free:
        return free
    if periods is None or len(periods) != len(sets) or any(p is None for p in periods):
        return ()
    slack = min(range(len(sets)), key=lambda i: periods[i])
    return tuple(sorted(cpu for replica in sets[slack] for cpu in replica))
