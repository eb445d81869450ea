"""Platform specs: the ``--platform`` string, and the Platform it names.

Sources (DESIGN.md, "platform"), chosen by a spec string that parse_platform_spec reads:

- ``auto``: discover() (tunerd.platform.discovery) reads the sysfs tree under ``sysfs_root`` (see
  tunerd.platform.sysfs for the roots).
- ``emulate:NAME=CPUS@SPEED,...``: real CPUs of this machine, each cluster slowed to SPEED (0 < SPEED
  <= 1). effective_speed() (tunerd.platform.clusters) follows the emulated cpufreq files, so emulated
  DVFS and a real board go through the same reads.
- ``board:NAME`` or a path to a board ``.json``: a simulated board (no real CPUs).

Clusters of ``auto`` and ``emulate`` platforms are ordered slowest first (tunerd.platform.clusters).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

from ..errors import ConfigError
from .clusters import Cluster, Platform
from .discovery import check_sysfs_root, discover, read_thermal_zones
from .sysfs import CPUFREQ_DIR, SysfsReader, format_cpu_list, parse_cpu_list


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


# --- simulated boards ---------------------------------------------------------------------------

def board_platform(spec: PlatformSpec) -> Platform:
    """A simulated platform from a board file (DESIGN.md "Board file"); CPUs numbered in order."""
    from .boards import cluster_speed, load_board  # the one board-file reader: schema, shipped boards

    clusters, first = [], 0
    board = load_board(spec.board or "")
    for c in board["clusters"]:
        cores, khz = int(c["cores"]), round(float(c["freq_mhz"]) * 1000)
        # NOTE: speed is the clock over the core type's reference clock (tunerd.platform.boards)
        clusters.append(Cluster(c["name"], c["core_type"], tuple(range(first, first + cores)),
                                max_khz=khz, cur_khz=khz, speed=cluster_speed(board, c)))
        first += cores
    return Platform(tuple(clusters), "board", (), spec=spec.text)
