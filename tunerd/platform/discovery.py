"""Platform discovery: the clusters and thermal zones of the machine (or fake tree) under a sysfs root.

The ``auto`` platform spec (tunerd.platform.spec) resolves to discover(). Clusters come from cpufreq
policies, CPUs without one are grouped by core type and capacity, indistinguishable clusters are
merged (the merged cluster follows all their policies), hardware threads of one core become one core
(``Cluster.smt_siblings``), and the result is named (``name_clusters``): Qualcomm's ``silver``,
``gold``, ``prime``, Intel's ``e-core``, ``p-core``, else by speed
(tunerd.platform.clusters.cluster_names). The emulated platform reuses check_sysfs_root and
read_thermal_zones.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import PlatformError
from .clusters import Cluster, Platform, ThermalZone, TripPoint, cluster_names
from .sysfs import (CPU_DIR, CPUFREQ_DIR, THERMAL_DIR, SysfsReader, arm_core_name, format_cpu_list,
                    parse_cpuinfo, parse_int, parse_midr, read_parsed)

log = logging.getLogger(__name__)


@dataclass
class _Domain:
    cpus: list[int]
    policy: str | None      # sysfs-relative cpufreq policy directory, None without cpufreq


def discover(sysfs_root: str | os.PathLike = "/sys", proc_root: str | os.PathLike | None = None,
             available_cpus=None) -> Platform:
    """The platform of the machine (or fake tree) under ``sysfs_root``; source ``"auto"``.

    Clusters come from cpufreq policies; CPUs without a policy are grouped by (capacity, core type),
    so a machine without cpufreq or capacity data (an x86 VM) is one cluster of all online CPUs.
    With ``available_cpus``, online CPUs outside it are left out (a cpuset: systemd's AllowedCPUs=,
    a container): stage workers could not be pinned there.
    """
    fs = SysfsReader(sysfs_root, proc_root)
    check_sysfs_root(fs)
    online = online_cpus(fs)
    if available_cpus is not None:
        outside = [cpu for cpu in online if cpu not in available_cpus]
        if outside:
            log.info("CPUs %s are online but outside this process's CPU set: left out", format_cpu_list(outside))
            online = [cpu for cpu in online if cpu in available_cpus]
            if not online:
                raise PlatformError(f"none of the online CPUs is in this process's CPU set "
                                    f"({format_cpu_list(sorted(available_cpus)) or 'empty'})")
    core_types = read_core_types(fs, online)
    for cpu, kind in hybrid_kinds(fs).items():
        if cpu in core_types:
            core_types[cpu] = f"{core_types[cpu]} {kind}"
    # Documentation/ABI/testing/sysfs-devices-system-cpu, cpuX/cpu_capacity: "capacity of cpuX",
    # normalised so the most capable CPU is 1024; only arm, arm64 and riscv DT systems have it.
    capacities = {cpu: fs.read_int(f"{CPU_DIR}/cpu{cpu}/cpu_capacity") for cpu in online}
    domains = cpufreq_domains(fs, online)
    covered = {cpu for d in domains for cpu in d.cpus}
    rest = [cpu for cpu in online if cpu not in covered]
    if rest:
        if domains:
            log.info("CPUs %s have no cpufreq policy; grouped by core type", format_cpu_list(rest))
        domains += _domains_by_kind(rest, core_types, capacities)
    clusters = [_measure(fs, d, core_types, capacities) for d in domains]
    clusters = _merge_indistinguishable(clusters)
    clusters = [_physical_cores(c, siblings_of(fs, online)) for c in clusters]
    return Platform(name_clusters(clusters), "auto", read_thermal_zones(fs), spec="auto")


def check_sysfs_root(fs: SysfsReader) -> None:
    """Refuse a fake filesystem root given where the directory that plays /sys was meant."""
    if not fs.exists(CPU_DIR) and (fs.sysfs_root / "sys" / CPU_DIR).is_dir():
        raise PlatformError(f"{fs.sysfs_root} has no {CPU_DIR}, but {fs.sysfs_root / 'sys'} has: "
                            f"--sysfs-root is the directory that plays /sys; did you mean "
                            f"{fs.sysfs_root / 'sys'}?")


def online_cpus(fs: SysfsReader) -> list[int]:
    """CPUs online now, from ``cpu/online`` (sysfs-devices-system-cpu: "cpus that are online and
    being scheduled"); without it, the ``cpuN`` directories whose ``online`` is not 0 (cpu0 often
    has no ``online`` file: it cannot be hot-unplugged, Documentation/core-api/cpu_hotplug.rst).
    """
    cpus = fs.read_cpus(f"{CPU_DIR}/online")
    if cpus is None:
        cpus = [n for n, name in fs.numbered(CPU_DIR, "cpu")
                if fs.read_int(f"{CPU_DIR}/{name}/online", 1) != 0]
    if cpus:
        return cpus
    if fs.sysfs_root == Path("/sys"):
        # Sandboxes (gVisor, some containers) hide /sys/devices: the CPUs we may run on is all we know.
        cpus = sorted(os.sched_getaffinity(0))
        log.warning("no CPU list in /sys; using this process's CPUs %s", format_cpu_list(cpus))
        return cpus
    raise PlatformError(f"no online CPUs under {fs.path(CPU_DIR)} (no 'online' file, no cpuN directories)")


def read_core_types(fs: SysfsReader, cpus: list[int]) -> dict[int, str]:
    """Core type per CPU: MIDR_EL1 from sysfs, else cpuinfo's CPU part, else its model name.

    cpuinfo only names core types: junk there costs names (a warning), not the platform.
    """
    per_cpu: dict[int, dict[str, str]] = {}
    common: dict[str, str] = {}
    text = fs.read_proc("cpuinfo")
    if text is not None:
        try:
            per_cpu, common = parse_cpuinfo(text)
        except ValueError as err:
            log.warning("%s: %s; core types from sysfs only", fs.proc_root / "cpuinfo", err)
    return {cpu: _core_type(fs, cpu, {**common, **per_cpu.get(cpu, {})}) for cpu in cpus}


def _core_type(fs: SysfsReader, cpu: int, fields: dict[str, str]) -> str:
    # arm64 only: cpuX/regs/identification/midr_el1 (sysfs-devices-system-cpu), exact per CPU even
    # when cpuinfo is missing. arm32 kernels print the same fields in cpuinfo ("CPU part").
    midr = read_parsed(fs.path(f"{CPU_DIR}/cpu{cpu}/regs/identification/midr_el1"), parse_midr)
    if midr is not None:
        return arm_core_name(*midr)
    if "CPU implementer" in fields and "CPU part" in fields:
        try:
            return arm_core_name(parse_int(fields["CPU implementer"]), parse_int(fields["CPU part"]))
        except ValueError as err:
            log.warning("cpuinfo of cpu%d: %s", cpu, err)
    # x86 (and arm32 before 3.8: "Processor" in the header) name the model in words.
    for key in ("model name", "Processor", "vendor_id"):
        if fields.get(key):
            return " ".join(fields[key].split())
    return "unknown"


# Intel hybrid parts register one PMU per core kind: /sys/devices/cpu_core/cpus lists the P-cores'
# CPUs, /sys/devices/cpu_atom/cpus the E-cores' (Documentation/ABI/testing/sysfs-bus-event_source-
# devices, arch/x86/events/intel/core.c). cpuinfo names both kinds with one "model name".
HYBRID_PMUS = (("devices/cpu_core/cpus", "P-core"), ("devices/cpu_atom/cpus", "E-core"))


def hybrid_kinds(fs: SysfsReader) -> dict[int, str]:
    """CPU -> ``P-core`` / ``E-core`` on an Intel hybrid part; empty elsewhere."""
    kinds: dict[int, str] = {}
    for rel, kind in HYBRID_PMUS:
        for cpu in fs.read_cpus(rel) or []:
            kinds[cpu] = kind
    return kinds


def siblings_of(fs: SysfsReader, online: list[int]) -> dict[int, tuple[int, ...]]:
    """CPU -> the online hardware threads of its core, itself included, from
    ``cpuN/topology/thread_siblings_list`` (sysfs-devices-system-cpu; ``core_cpus_list`` on kernels
    since 5.6, which keep the old name too). A CPU without the file is a core of its own."""
    online_set = set(online)
    out: dict[int, tuple[int, ...]] = {}
    for cpu in online:
        threads = fs.read_cpus(f"{CPU_DIR}/cpu{cpu}/topology/thread_siblings_list")
        if threads is None:
            threads = fs.read_cpus(f"{CPU_DIR}/cpu{cpu}/topology/core_cpus_list")
        core = tuple(t for t in (threads or [cpu]) if t in online_set)
        if cpu not in core:
            raise PlatformError(f"{fs.path(f'{CPU_DIR}/cpu{cpu}/topology/thread_siblings_list')}: "
                                f"cpu{cpu} is not among its own siblings ({format_cpu_list(threads or [])})")
        out[cpu] = core
    return out


def _physical_cores(cluster: Cluster, siblings: dict[int, tuple[int, ...]]) -> Cluster:
    """The cluster as physical cores: ``cpus`` one thread (the first) per core, the threads in
    ``smt_siblings`` when a core has several online. A stage of N cores then takes N cores, not
    two threads of one (DESIGN.md, "core")."""
    cores = sorted({siblings.get(cpu, (cpu,)) for cpu in cluster.cpus})
    if all(len(core) == 1 for core in cores):
        return cluster
    outside = [t for core in cores for t in core if t not in cluster.cpus]
    if outside:
        raise PlatformError(f"CPU {format_cpu_list(outside)} shares a core with cluster CPUs "
                            f"{format_cpu_list(cluster.cpus)} but is not in that cluster's cpufreq policy")
    return replace(cluster, cpus=tuple(core[0] for core in cores), smt_siblings=tuple(cores))


def cpufreq_domains(fs: SysfsReader, online: list[int]) -> list[_Domain]:
    """Online CPUs per cpufreq policy (Documentation/admin-guide/pm/cpufreq.rst).

    ``related_cpus`` lists all (online and offline) CPUs of a policy, ``affected_cpus`` the online
    ones; policyX is named after a CPU of the policy. Older kernels have no ``cpufreq/policyX`` but
    a ``cpuN/cpufreq`` directory per CPU (today a link to its policy): read those instead.
    """
    online_set = set(online)
    candidates = [f"{CPUFREQ_DIR}/{name}" for _, name in fs.numbered(CPUFREQ_DIR, "policy")]
    legacy = not candidates
    if legacy:
        candidates = [f"{CPU_DIR}/cpu{cpu}/cpufreq" for cpu in online
                      if fs.exists(f"{CPU_DIR}/cpu{cpu}/cpufreq")]
    domains: list[_Domain] = []
    owner: dict[int, str] = {}
    for rel in candidates:
        related = fs.read_cpus(f"{rel}/related_cpus")
        if related is None:
            related = fs.read_cpus(f"{rel}/affected_cpus")
        if related is None:
            match = re.search(r"(?:policy|cpu)(\d+)(?:/cpufreq)?$", rel)
            related = [int(match.group(1))]
        cpus = [cpu for cpu in related if cpu in online_set]
        if not cpus:
            log.debug("%s: no online CPUs", rel)
            continue
        clash = [cpu for cpu in cpus if cpu in owner]
        if clash and legacy and len(clash) == len(cpus):
            continue  # the same policy again, through another CPU's cpufreq directory
        if clash:
            raise PlatformError(f"{fs.path(rel)}: CPU {format_cpu_list(clash)} is also in "
                                f"{fs.path(owner[clash[0]])}")
        owner.update({cpu: rel for cpu in cpus})
        domains.append(_Domain(cpus, rel))
    return domains


def _domains_by_kind(cpus: list[int], core_types: dict[int, str],
                     capacities: dict[int, int | None]) -> list[_Domain]:
    # NOTE: topology/cluster_id is not used: on x86 it is the L2 domain, which makes every P-core
    # of a hybrid Intel part its own "cluster".
    groups: dict[tuple, list[int]] = {}
    for cpu in cpus:
        groups.setdefault((capacities.get(cpu), core_types.get(cpu)), []).append(cpu)
    return [_Domain(group, None) for group in groups.values()]


def _measure(fs: SysfsReader, domain: _Domain, core_types: dict[int, str],
             capacities: dict[int, int | None]) -> Cluster:
    types = list(dict.fromkeys(core_types[cpu] for cpu in domain.cpus))
    caps = [capacities[cpu] for cpu in domain.cpus if capacities.get(cpu) is not None]
    max_khz = min_khz = cur_khz = None
    if domain.policy:
        # cpufreq.rst: cpuinfo_max_freq/cpuinfo_min_freq are the hardware limits; scaling_cur_freq
        # is readable by all users (cpuinfo_cur_freq needs root).
        max_khz = fs.read_int(f"{domain.policy}/cpuinfo_max_freq")
        min_khz = fs.read_int(f"{domain.policy}/cpuinfo_min_freq")
        cur_khz = fs.read_int(f"{domain.policy}/scaling_cur_freq")
    return Cluster(name="", core_type="+".join(types), cpus=tuple(domain.cpus),
                   capacity=max(caps) if caps else None,
                   max_khz=max_khz, min_khz=min_khz, cur_khz=cur_khz, policy=domain.policy)


# Policies of one core type whose maximum frequencies differ by at most this share are one cluster:
# Intel's "favoured" cores (Turbo Boost Max 3.0) run 100-200 MHz above their siblings (2-4%),
# while a Snapdragon's prime core runs 15-20% above its gold ones and is a cluster of its own.
MERGE_KHZ_SHARE = 0.05


def _merge_indistinguishable(clusters: list[Cluster]) -> list[Cluster]:
    """Merge clusters of the same core type and capacity at (nearly, MERGE_KHZ_SHARE) the same
    maximum frequency; the merged cluster follows every policy of its parts (its effective speed
    is the slowest of theirs, effective_speed) and reports the lowest maximum.

    x86 (acpi-cpufreq, intel_pstate) and arm64 servers (CPPC) have one policy per core; without
    this, every core of a homogeneous machine would be a cluster of its own. RK3588's four A76 are
    two policies of two cores: one cluster of four that follows both.
    """
    merged: list[Cluster] = []
    for c in clusters:
        for i, m in enumerate(merged):
            if (m.core_type, m.capacity) == (c.core_type, c.capacity) and _same_khz(m.max_khz, c.max_khz):
                cpus = tuple(sorted(m.cpus + c.cpus))
                policies = tuple(p for p in (*m.followed_policies, *c.followed_policies) if p)
                merged[i] = replace(m, cpus=cpus, policies=tuple(dict.fromkeys(policies)),
                                    max_khz=_lowest(m.max_khz, c.max_khz),
                                    min_khz=_lowest(m.min_khz, c.min_khz),
                                    cur_khz=_lowest(m.cur_khz, c.cur_khz))
                break
        else:
            merged.append(c if c.policy is None else replace(c, policies=(c.policy,)))
    return [c if len(c.policies) > 1 else replace(c, policies=()) for c in merged]


def _same_khz(a: int | None, b: int | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return abs(a - b) <= MERGE_KHZ_SHARE * max(a, b)


def _lowest(a: int | None, b: int | None) -> int | None:
    known = [v for v in (a, b) if v is not None]
    return min(known) if known else None


# Tie-break only, when capacity and frequency cannot order two clusters (Jetson TX2: A57 and
# Denver2 both at 2.0 GHz, no cpu_capacity): roughly single-thread performance, slowest first.
_CORE_RANK = {name: rank for rank, name in enumerate([
    "A7", "A35", "A53", "Kryo2xx-Silver", "A55", "Kryo3xx-Silver", "Kryo4xx-Silver", "A510", "A520",
    "A9", "A12", "A17", "A15", "A57", "A72", "A73", "Kryo2xx-Gold", "Denver2", "A75", "Kryo3xx-Gold",
    "Carmel", "A76", "Kryo4xx-Gold", "A77", "A78", "A710", "A715", "A720", "X1", "X2", "X3", "X4"], 1)}


def _order_by_speed(clusters: list[Cluster]) -> list[Cluster]:
    use_capacity = all(c.capacity is not None for c in clusters)
    use_khz = all(c.max_khz is not None for c in clusters)
    return sorted(clusters, key=lambda c: (c.capacity if use_capacity else 0,
                                           c.max_khz if use_khz else 0,
                                           _CORE_RANK.get(c.core_type, 0), c.cpus[0]))


# Names a person recognises, by the kind a core type ends in: Qualcomm calls its Kryo cores silver
# and gold, the fastest gold cluster of a tri-cluster part the prime; Intel calls its kinds P- and
# E-cores.
_KIND_NAMES = (("-Silver", ["silver"]), ("-Gold", ["gold", "prime"]), (" E-core", ["e-core"]),
               (" P-core", ["p-core"]))


def name_clusters(clusters: list[Cluster]) -> tuple[Cluster, ...]:
    """Clusters ordered slowest first and named: by kind where every cluster's core type is a
    known kind (``_KIND_NAMES``) and the names come out distinct, else by speed (cluster_names)."""
    ordered = _order_by_speed(clusters)
    names = _kind_names(ordered)
    if names is None:
        names = cluster_names(len(ordered))
    return tuple(replace(c, name=name) for c, name in zip(ordered, names))


def _kind_names(ordered: list[Cluster]) -> list[str] | None:
    kinds = []
    for c in ordered:
        kind = next((k for k, (suffix, _) in enumerate(_KIND_NAMES) if c.core_type.endswith(suffix)), None)
        if kind is None:
            return None
        kinds.append(kind)
    names, seen = [], {}
    for kind in kinds:
        choices = _KIND_NAMES[kind][1]
        count = kinds.count(kind)
        if count > len(choices):
            return None
        # one gold cluster is "gold"; two are "gold" (slower) and "prime"
        index = seen.get(kind, 0)
        names.append(choices[index])
        seen[kind] = index + 1
    return names if len(set(names)) == len(names) and len(ordered) > 1 else None


def read_thermal_zones(fs: SysfsReader) -> tuple[ThermalZone, ...]:
    """``class/thermal/thermal_zoneN``: ``type``, ``temp`` and ``trip_point_K_temp``/``_type`` in m°C
    (Documentation/driver-api/thermal/sysfs-api.rst; trip points are numbered from 0 without gaps).
    A zone whose ``temp`` cannot be read (sensor asleep: EAGAIN/ENODATA) has temp_mc None.
    """
    zones = []
    for _, name in fs.numbered(THERMAL_DIR, "thermal_zone"):
        rel = f"{THERMAL_DIR}/{name}"
        trips = []
        for k in range(64):
            temp = fs.read_int(f"{rel}/trip_point_{k}_temp")
            if temp is None:
                break
            trips.append(TripPoint(temp, (fs.read_text(f"{rel}/trip_point_{k}_type") or "").strip()))
        zones.append(ThermalZone(name, (fs.read_text(f"{rel}/type") or "").strip() or "unknown",
                                 fs.read_int(f"{rel}/temp"), tuple(trips)))
    return tuple(zones)
