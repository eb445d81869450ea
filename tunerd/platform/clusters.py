"""The platform's data: clusters of cores, thermal zones, and the Platform they make up.

A Platform comes from one of three sources (DESIGN.md, "platform"): sysfs discovery
(tunerd.platform.discovery), or an emulate:/board: spec (tunerd.platform.spec). Clusters are ordered
slowest first. Discovery names Qualcomm's and Intel hybrid's clusters by their kind (``silver``,
``gold``, ``prime``; ``e-core``, ``p-core``); any other machine's by cluster_names, where ``big`` is
the fastest: one cluster is ``big``; two are ``little``, ``big``; three ``little``, ``mid``, ``big``;
more ``little``, ``mid0``..., ``big``.

effective_speed is here, beside Cluster, because it reads only the cluster's own cpufreq policies:
the monitor and every stage worker call it, whatever spec made the platform. A cluster may follow
several policies (RK3588's four A76 are two policies of two; x86 has one per core): its effective
speed is the slowest of theirs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ConfigError
from .sysfs import CPUFREQ_DIR, format_cpu_list, read_positive_int


@dataclass(frozen=True)
class Cluster:
    """Cores of one type in one frequency domain. Frequencies in kHz, as cpufreq reports them.

    ``capacity`` is the kernel's cpu_capacity (1024 = the fastest CPU of the system); ``max_khz`` and
    ``min_khz`` the hardware limits (cpuinfo_max_freq/cpuinfo_min_freq), ``cur_khz`` the frequency
    when read. ``speed`` is the nominal speed factor of an emulated cluster, 1.0 for real ones.
    ``policy`` is its (first) cpufreq policy directory relative to the sysfs root, as discovery
    found it, and ``policies`` every policy its CPUs belong to (empty: just ``policy``); the cluster
    follows all of them. ``follow_cpufreq`` is False for an emulated cluster over the host's own
    ``/sys``: the host's DVFS already acts on the real cores, so following its files would count it
    twice. ``cpus`` holds one CPU per physical core (its first hardware thread); ``smt_siblings``,
    where a core has several threads, lists each core's threads (``((0, 1), (2, 3))``), empty
    without SMT: a stage of N cores takes N physical cores (DESIGN.md, "core").
    """
    name: str
    core_type: str
    cpus: tuple[int, ...]
    capacity: int | None = None
    max_khz: int | None = None
    min_khz: int | None = None
    cur_khz: int | None = None
    speed: float = 1.0
    policy: str | None = None
    follow_cpufreq: bool = True
    policies: tuple[str, ...] = ()
    smt_siblings: tuple[tuple[int, ...], ...] = ()

    @property
    def cores(self) -> int:
        return len(self.cpus)

    def policy_path(self, sysfs_root: str | os.PathLike, name: str) -> str | None:
        """Path of the file ``name`` of this cluster's cpufreq policy under ``sysfs_root``; None
        when its cpufreq is not to be followed.

        NOTE: the policy is not always ``policy<first CPU>``: its first CPU may be offline (the
        policy keeps the number it was created with) and old kernels only have ``cpuN/cpufreq``.
        Without a known policy (simulated boards, hand-built clusters) that name is the guess.
        """
        if not self.follow_cpufreq:
            return None
        rel = self.policy or f"{CPUFREQ_DIR}/policy{self.cpus[0]}"
        return os.path.join(sysfs_root, rel, name)

    @property
    def followed_policies(self) -> tuple[str, ...]:
        """Every cpufreq policy directory (sysfs-relative) this cluster follows; () when none."""
        if not self.follow_cpufreq:
            return ()
        return self.policies or (self.policy or f"{CPUFREQ_DIR}/policy{self.cpus[0]}",)

    def policy_paths(self, sysfs_root: str | os.PathLike, name: str) -> list[str]:
        """Path of the file ``name`` in each followed policy (see ``policy_path``)."""
        return [os.path.join(sysfs_root, rel, name) for rel in self.followed_policies]

    @property
    def threads(self) -> tuple[int, ...]:
        """Every hardware thread of the cluster's cores (``cpus`` when there is no SMT)."""
        return tuple(sorted(t for core in self.smt_siblings for t in core)) or self.cpus

    def to_dict(self) -> dict:
        return {"name": self.name, "core_type": self.core_type, "cpus": list(self.cpus),
                "capacity": self.capacity, "min_khz": self.min_khz, "cur_khz": self.cur_khz,
                "max_khz": self.max_khz, "speed": self.speed, "policy": self.policy,
                "policies": list(self.policies or ([self.policy] if self.policy and self.follow_cpufreq else [])),
                "smt_siblings": [list(core) for core in self.smt_siblings]}


@dataclass(frozen=True)
class TripPoint:
    temp_mc: int
    type: str


@dataclass(frozen=True)
class ThermalZone:
    """A thermal zone (Documentation/driver-api/thermal/sysfs-api.rst); temperatures in m°C."""
    name: str
    type: str
    temp_mc: int | None
    trips: tuple[TripPoint, ...] = ()

    @property
    def temp_c(self) -> float | None:
        return None if self.temp_mc is None else self.temp_mc / 1000.0

    def to_dict(self) -> dict:
        return {"name": self.name, "type": self.type, "temp_c": self.temp_c,
                "trips": [{"temp_c": t.temp_mc / 1000.0, "type": t.type} for t in self.trips]}


@dataclass(frozen=True)
class Platform:
    clusters: tuple[Cluster, ...]
    source: str                      # "auto" | "emulate" | "board"
    thermal: tuple[ThermalZone, ...] = ()
    spec: str = ""                   # the spec it was resolved from, e.g. "emulate:big=0@1.0,..."

    def cluster(self, name: str) -> Cluster:
        for cluster in self.clusters:
            if cluster.name == name:
                return cluster
        raise ConfigError(f"no cluster {name!r} on this platform (clusters: {', '.join(self.names)})")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.clusters)

    @property
    def cpus(self) -> tuple[int, ...]:
        return tuple(sorted(cpu for c in self.clusters for cpu in c.cpus))

    def describe(self) -> str:
        """One line for logs: ``auto: little=A53 0-3, big=A73 4-7``."""
        parts = [f"{c.name}={c.core_type} {format_cpu_list(c.cpus)}" for c in self.clusters]
        return f"{self.source}: {', '.join(parts)}"

    def to_dict(self) -> dict:
        return {"source": self.source, "spec": self.spec,
                "clusters": [c.to_dict() for c in self.clusters],
                "thermal": [z.to_dict() for z in self.thermal]}


def cluster_names(count: int) -> list[str]:
    """Names for ``count`` clusters ordered slowest first (see the module docstring)."""
    if count <= 0:
        return []
    if count == 1:
        return ["big"]
    middle = ["mid"] if count == 3 else [f"mid{i}" for i in range(count - 2)]
    return ["little", *middle, "big"]


def core_type_speeds(platform: Platform) -> dict[str, float]:
    """Per cluster its clock over the fastest clock of its core type (a Snapdragon 855's gold
    cluster 2419200/2841600 = 0.85 of its prime's; 1.0 for a core type's fastest cluster, where a
    clock is unknown, and on emulated platforms, whose clusters are each a core type of their own
    with their speed in the costs): the speed the tuning gives a cluster so that clusters of one
    core type share one row of costs (DESIGN.md, "platform"). A board's clusters carry it already."""
    if platform.source == "board":
        return {c.name: c.speed for c in platform.clusters}
    fastest: dict[str, int] = {}
    for c in platform.clusters:
        if c.max_khz and platform.source == "auto":
            fastest[c.core_type] = max(fastest.get(c.core_type, 0), c.max_khz)
    return {c.name: (c.max_khz / fastest[c.core_type]) if c.max_khz and c.core_type in fastest else 1.0
            for c in platform.clusters}


def effective_speed(cluster: Cluster, sysfs_root: str | os.PathLike = "/sys") -> float:
    """SPEED × min(scaling_cur_freq, scaling_max_freq) / cpuinfo_max_freq, the slowest of the
    cluster's policies (a stage spread over two policies runs at the pace of the slower).

    Read from the cluster's policies under ``sysfs_root`` (``Cluster.followed_policies``); with one
    policy the hardware maximum is ``cluster.max_khz`` when known, so a call is two small reads.
    Without those files (or with junk in them) a policy counts at the nominal ``cluster.speed``:
    this runs once per frame and never raises. Workers stretch compute by 1/effective_speed on
    emulated platforms only; a real core slows down by itself.
    """
    policies = cluster.followed_policies
    ratios = []
    for rel in policies:
        base = os.path.join(sysfs_root, rel)
        hw_max = ((cluster.max_khz if len(policies) == 1 else None)
                  or read_positive_int(os.path.join(base, "cpuinfo_max_freq")))
        if not hw_max:
            continue
        known = [f for f in (read_positive_int(os.path.join(base, "scaling_cur_freq")),
                             read_positive_int(os.path.join(base, "scaling_max_freq"))) if f]
        if known:
            ratios.append(min(1.0, min(known) / hw_max))
    return cluster.speed * min(ratios) if ratios else cluster.speed
