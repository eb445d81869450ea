"""The platform: the board's CPUs as clusters, from sysfs (``auto``), emulation or a board file.

Sources (DESIGN.md, "platform"), chosen by a spec string that parse_platform_spec reads:

- ``auto``: discover() reads the sysfs tree under ``sysfs_root`` (see tunerd.platform.sysfs for the roots).
- ``emulate:NAME=CPUS@SPEED,...``: real CPUs of this machine, each cluster slowed to SPEED (0 < SPEED
  <= 1). effective_speed() follows the emulated cpufreq files, so emulated DVFS and a real board go
  through the same reads.
- ``board:NAME`` or a path to a board ``.json``: a simulated board (no real CPUs).

Clusters of ``auto`` and ``emulate`` platforms are ordered slowest first and ``big`` is always the
fastest, so ``@big`` is valid on every machine: one cluster is ``big``; two are ``little``, ``big``;
three ``little``, ``mid``, ``big``; more ``little``, ``mid0``..., ``big``.
"""
from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import ConfigError, PlatformError
from .sysfs import (CPU_DIR, CPUFREQ_DIR, THERMAL_DIR, SysfsReader, arm_core_name, format_cpu_list,
                    parse_cpu_list, parse_cpuinfo, parse_int, parse_midr, read_parsed, read_positive_int)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cluster:
    """Cores of one type in one frequency domain. Frequencies in kHz, as cpufreq reports them.

    ``capacity`` is the kernel's cpu_capacity (1024 = the fastest CPU of the system); ``max_khz`` and
    ``min_khz`` the hardware limits (cpuinfo_max_freq/cpuinfo_min_freq), ``cur_khz`` the frequency
    when read. ``speed`` is the nominal speed factor of an emulated cluster, 1.0 for real ones.
    ``policy`` is its cpufreq policy directory relative to the sysfs root, as discovery found it.
    ``follow_cpufreq`` is False for an emulated cluster over the host's own ``/sys``: the host's
    DVFS already acts on the real cores, so following its files would count it twice.
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

    def to_dict(self) -> dict:
        return {"name": self.name, "core_type": self.core_type, "cpus": list(self.cpus),
                "capacity": self.capacity, "min_khz": self.min_khz, "cur_khz": self.cur_khz,
                "max_khz": self.max_khz, "speed": self.speed, "policy": self.policy}


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


# --- auto: discovery from sysfs -----------------------------------------------------------------

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
    return Platform(_name_by_speed(clusters), "auto", read_thermal_zones(fs), spec="auto")


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


def _merge_indistinguishable(clusters: list[Cluster]) -> list[Cluster]:
    """Merge clusters with the same core type, capacity and frequency range.

    x86 (acpi-cpufreq, intel_pstate) and arm64 servers (CPPC) have one policy per core; without
    this, every core of a homogeneous machine would be a cluster of its own.
    """
    merged: dict[tuple, Cluster] = {}
    for c in clusters:
        key = (c.core_type, c.capacity, c.max_khz, c.min_khz)
        if key in merged:
            merged[key] = replace(merged[key], cpus=tuple(sorted(merged[key].cpus + c.cpus)))
        else:
            merged[key] = c
    return list(merged.values())


# Tie-break only, when capacity and frequency cannot order two clusters (Jetson TX2: A57 and
# Denver2 both at 2.0 GHz, no cpu_capacity): roughly single-thread performance, slowest first.
_CORE_RANK = {name: rank for rank, name in enumerate([
    "A7", "A35", "A53", "Kryo2xx-Silver", "A55", "Kryo3xx-Silver", "Kryo4xx-Silver", "A510", "A520",
    "A9", "A12", "A17", "A15", "A57", "A72", "A73", "Kryo2xx-Gold", "Denver2", "A75", "Kryo3xx-Gold",
    "Carmel", "A76", "Kryo4xx-Gold", "A77", "A78", "A710", "A715", "A720", "X1", "X2", "X3", "X4"], 1)}


def _name_by_speed(clusters: list[Cluster]) -> tuple[Cluster, ...]:
    use_capacity = all(c.capacity is not None for c in clusters)
    use_khz = all(c.max_khz is not None for c in clusters)
    ordered = sorted(clusters, key=lambda c: (c.capacity if use_capacity else 0,
                                              c.max_khz if use_khz else 0,
                                              _CORE_RANK.get(c.core_type, 0), c.cpus[0]))
    return tuple(replace(c, name=name) for c, name in zip(ordered, cluster_names(len(ordered))))


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


# --- specs --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EmulatedCluster:
    name: str
    cpus: tuple[int, ...]
    speed: float


@dataclass(frozen=True)
class PlatformSpec:
    kind: str                                   # "auto" | "emulate" | "board"
    text: str                                   # the spec as given
    clusters: tuple[EmulatedCluster, ...] = ()  # emulate only
    board: str | None = None                    # board NAME, or a path to a board file


SPEC_HELP = ("auto, emulate:NAME=CPUS@SPEED,... (e.g. emulate:big=0@1.0,little=1@0.4), board:NAME "
             "or a board .json")
# Cluster names appear in pipeline configs (`0-9@big:4`): no '-', '@', ':', '|' or spaces.
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_ENTRY = re.compile(rf"({_NAME})=([^@=]*)@([^@=]*)")


def parse_platform_spec(spec: str) -> PlatformSpec:
    """Parse a ``--platform`` value; ConfigError, with what was expected, on anything else."""
    text = (spec or "").strip()
    if text in ("", "auto"):
        return PlatformSpec("auto", "auto")
    if text.startswith("emulate:"):
        return PlatformSpec("emulate", text, clusters=_parse_emulated(text))
    if text.startswith("board:"):
        name = text[len("board:"):]
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ConfigError(f"bad board name in {text!r}: expected board:NAME, e.g. board:hikey970")
        return PlatformSpec("board", text, board=name)
    if text.endswith(".json") or os.sep in text or os.path.isfile(text):
        return PlatformSpec("board", text, board=text)
    raise ConfigError(f"unknown platform spec {text!r}: expected {SPEC_HELP}")


def _parse_emulated(text: str) -> tuple[EmulatedCluster, ...]:
    body = text[len("emulate:"):]
    if not body.strip():
        raise ConfigError(f"{text!r} names no cluster: expected emulate:NAME=CPUS@SPEED,...")
    clusters: list[EmulatedCluster] = []
    owner: dict[int, str] = {}
    # CPU lists contain commas too: a new cluster starts at a comma followed by NAME=.
    for entry in re.split(rf",(?={_NAME}=)", body):
        match = _ENTRY.fullmatch(entry.strip())
        if not match:
            raise ConfigError(f"bad cluster {entry!r} in {text!r}: expected NAME=CPUS@SPEED, e.g. big=0-3@1.0")
        name, cpu_text, speed_text = match.groups()
        if any(c.name == name for c in clusters):
            raise ConfigError(f"cluster {name!r} is named twice in {text!r}")
        try:
            cpus = parse_cpu_list(cpu_text)
        except ValueError as err:
            raise ConfigError(f"cluster {name!r}: {err}") from err
        if not cpus:
            raise ConfigError(f"cluster {name!r} has no CPUs in {text!r}")
        for cpu in cpus:
            if cpu in owner:
                raise ConfigError(f"CPU {cpu} is in both cluster {owner[cpu]!r} and cluster {name!r}")
            owner[cpu] = name
        clusters.append(EmulatedCluster(name, tuple(cpus), _parse_speed(name, speed_text)))
    return tuple(clusters)


def _parse_speed(name: str, text: str) -> float:
    try:
        speed = float(text)
    except ValueError as err:
        raise ConfigError(f"cluster {name!r}: speed {text!r} is not a number") from err
    if not math.isfinite(speed) or speed <= 0:
        raise ConfigError(f"cluster {name!r}: speed must be > 0, got {text!r}")
    if speed > 1:
        # Emulation stretches compute by 1/SPEED: it can slow a real core down, never speed it up.
        raise ConfigError(f"cluster {name!r}: speed must be <= 1 (a fraction of this machine's "
                          f"core speed), got {text!r}")
    return speed


# --- resolution ---------------------------------------------------------------------------------

def is_host_sysfs(sysfs_root: str | os.PathLike) -> bool:
    """Whether ``sysfs_root`` is this machine's own /sys (not a fake or emulated tree)."""
    return os.path.realpath(sysfs_root) == "/sys"


def resolve_platform(spec: str | PlatformSpec = "auto", *, sysfs_root: str | os.PathLike = "/sys",
                     proc_root: str | os.PathLike | None = None,
                     available_cpus=None) -> Platform:
    """The Platform a spec names. ``available_cpus`` (default: this process's affinity) is what
    emulated clusters, and discovery on the real ``/sys``, may use; tests inject it."""
    parsed = spec if isinstance(spec, PlatformSpec) else parse_platform_spec(spec)
    if parsed.kind == "auto":
        # NOTE: a fake tree describes another machine: this process's CPU set says nothing of it
        if available_cpus is None and is_host_sysfs(sysfs_root):
            available_cpus = os.sched_getaffinity(0)
        return discover(sysfs_root, proc_root, available_cpus)
    if parsed.kind == "emulate":
        return emulated_platform(parsed, sysfs_root=sysfs_root, available_cpus=available_cpus)
    return board_platform(parsed)


def emulated_platform(spec: PlatformSpec, *, sysfs_root: str | os.PathLike = "/sys",
                      available_cpus=None) -> Platform:
    available = set(os.sched_getaffinity(0) if available_cpus is None else available_cpus)
    for c in spec.clusters:
        missing = [cpu for cpu in c.cpus if cpu not in available]
        if missing:
            raise ConfigError(f"cluster {c.name!r}: CPU {format_cpu_list(missing)} is not available on "
                              f"this machine (available: {format_cpu_list(available) or 'none'})")
    fs = SysfsReader(sysfs_root)
    check_sysfs_root(fs)
    # NOTE: emulated DVFS follows the cpufreq files of an emulated tree (--sysfs-root); under the
    # host's own /sys those are the host's real, governor-driven frequencies, which already act on
    # the real cores: SPEED stays constant there
    follow = not is_host_sysfs(sysfs_root)
    clusters = []
    for c in sorted(spec.clusters, key=lambda c: (c.speed, c.cpus[0])):
        policy = f"{CPUFREQ_DIR}/policy{c.cpus[0]}"
        khz = {k: fs.read_int(f"{policy}/{f}") if follow else None
               for k, f in (("max_khz", "cpuinfo_max_freq"), ("min_khz", "cpuinfo_min_freq"),
                            ("cur_khz", "scaling_cur_freq"))}
        # NOTE: the core type carries the speed so a cost table never mixes two emulated kinds.
        clusters.append(Cluster(c.name, f"emu@{c.speed:g}", c.cpus, capacity=round(1024 * c.speed),
                                speed=c.speed, policy=policy if follow else None, follow_cpufreq=follow, **khz))
    return Platform(tuple(clusters), "emulate", read_thermal_zones(fs), spec=spec.text)


def effective_speed(cluster: Cluster, sysfs_root: str | os.PathLike = "/sys") -> float:
    """SPEED × min(scaling_cur_freq, scaling_max_freq) / cpuinfo_max_freq of the cluster's policy.

    Read from the cluster's policy under ``sysfs_root`` (``Cluster.policy_path``); the hardware
    maximum is ``cluster.max_khz`` when known, so a call is two small reads. Without those files (or
    with junk in them) it is the nominal ``cluster.speed``: this runs once per frame and never
    raises. Workers stretch compute by 1/effective_speed on emulated platforms only; a real core
    slows down by itself.
    """
    if not cluster.follow_cpufreq:
        return cluster.speed
    hw_max = cluster.max_khz or read_positive_int(cluster.policy_path(sysfs_root, "cpuinfo_max_freq"))
    if not hw_max:
        return cluster.speed
    known = [f for f in (read_positive_int(cluster.policy_path(sysfs_root, "scaling_cur_freq")),
                         read_positive_int(cluster.policy_path(sysfs_root, "scaling_max_freq"))) if f]
    if not known:
        return cluster.speed
    return cluster.speed * min(1.0, min(known) / hw_max)


# --- simulated boards ---------------------------------------------------------------------------

def board_platform(spec: PlatformSpec) -> Platform:
    """A simulated platform from a board file (DESIGN.md "Board file"); CPUs numbered in order."""
    from .boards import load_board  # the one board-file reader: schema, shipped boards, HintsError

    clusters, first = [], 0
    for c in load_board(spec.board or "")["clusters"]:
        cores, khz = int(c["cores"]), round(float(c["freq_mhz"]) * 1000)
        clusters.append(Cluster(c["name"], c["core_type"], tuple(range(first, first + cores)),
                                max_khz=khz, cur_khz=khz))
        first += cores
    return Platform(tuple(clusters), "board", (), spec=spec.text)
