"""Reading the kernel's view of the CPUs: one reader with configurable roots, and pure parsers.

Roots. ``sysfs_root`` is the directory that plays ``/sys`` (default ``/sys``): files are read from
``SYSFS_ROOT/devices/system/cpu/...`` and ``SYSFS_ROOT/class/thermal/...``, the layout DESIGN.md uses
for emulated cpufreq files. ``proc_root`` plays ``/proc`` (only ``cpuinfo`` is read); when it is not
given it is the sibling ``proc`` of the sysfs root, so ``/sys`` gives ``/proc`` and a fake tree
``DIR/sys`` gives ``DIR/proc`` (tunerd.platform.fakesysfs writes both). Pass ``--proc-root`` to override.

Fallbacks. A file that is missing or unreadable (any OSError: sysfs attributes may also fail with
EIO/ENODATA/EBUSY on read) gives the caller's default: the caller documents what that means. A file
that is present but holds junk raises PlatformError naming the file, because a wrong platform is
worse than none.

The parsers are pure and raise ValueError on junk, so they can be tested on strings alone.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, TypeVar

from ..errors import PlatformError

log = logging.getLogger(__name__)
T = TypeVar("T")

CPU_DIR = "devices/system/cpu"
CPUFREQ_DIR = "devices/system/cpu/cpufreq"
THERMAL_DIR = "class/thermal"

# --- pure parsers -------------------------------------------------------------------------------

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_cpu_list(text: str) -> list[int]:
    """Parse a kernel CPU list into sorted unique CPU numbers: ``"0-3,8\\n"`` -> ``[0, 1, 2, 3, 8]``.

    Two formats exist and both are accepted: the ranged list of ``online``/``possible``
    (Documentation/ABI/testing/sysfs-devices-system-cpu, "cpu ranges ... e.g. 0-3,5") and the
    space-separated list cpufreq prints for ``related_cpus``/``affected_cpus`` ("0 1 2 3",
    Documentation/admin-guide/pm/cpufreq.rst). An empty string is the empty list (a policy whose
    CPUs are all offline has an empty ``affected_cpus``).
    """
    cpus: set[int] = set()
    for token in re.split(r"[,\s]+", text.strip()):
        if not token:
            continue
        match = _RANGE.fullmatch(token)
        if not match:
            raise ValueError(f"bad CPU list {text.strip()!r}: {token!r} is not N or N-M")
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if last < first:
            raise ValueError(f"bad CPU list {text.strip()!r}: range {token!r} runs backwards")
        cpus.update(range(first, last + 1))
    return sorted(cpus)


def format_cpu_list(cpus) -> str:
    """The inverse of parse_cpu_list, in the kernel's ranged form: ``[0, 1, 2, 3, 8]`` -> ``"0-3,8"``."""
    ordered = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def parse_int(text: str) -> int:
    """Parse one integer attribute (``"1844000\\n"``); decimal, or hex with ``0x``."""
    value = text.strip()
    try:
        return int(value, 16) if value.lower().startswith("0x") else int(value, 10)
    except ValueError as err:
        raise ValueError(f"expected an integer, got {value[:40]!r}") from err


def parse_cpuinfo(text: str) -> tuple[dict[int, dict[str, str]], dict[str, str]]:
    """Parse ``/proc/cpuinfo`` into (fields per ``processor`` number, fields outside any processor).

    Lines are ``key<tabs>: value`` (values may be empty: x86 "power management:"); blocks are
    separated by blank lines. arm32 adds a trailing block without "processor" ("Hardware",
    "Revision", "Serial") and kernels before 3.8 a leading "Processor : ARMv7 ..." line: both land in
    the second dict.
    """
    per_cpu: dict[int, dict[str, str]] = {}
    common: dict[str, str] = {}
    block: dict[str, str] = {}

    def flush() -> None:
        if "processor" in block:
            try:
                per_cpu[int(block["processor"])] = dict(block)
            except ValueError as err:
                raise ValueError(f"cpuinfo: processor {block['processor']!r} is not a number") from err
        else:
            common.update(block)
        block.clear()

    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            flush()
            continue
        key, sep, value = line.partition(":")
        if not sep or not key.strip():
            raise ValueError(f"cpuinfo line {lineno}: expected 'key: value', got {line[:60]!r}")
        key = key.strip()
        if key == "processor" and "processor" in block:
            flush()  # some kernels omit the blank line between processors
        block[key] = value.strip()
    flush()
    return per_cpu, common


def parse_midr(text: str) -> tuple[int, int]:
    """(implementer, part) from a MIDR_EL1 value such as ``"0x00000000410fd034"``.

    Implementer is bits 31:24 and PartNum bits 15:4 (Arm ARM, MIDR_EL1; the same fields cpuinfo
    prints as "CPU implementer" and "CPU part").
    """
    value = parse_int(text)
    if value < 0:
        raise ValueError(f"MIDR {text.strip()!r} is negative")
    return (value >> 24) & 0xFF, (value >> 4) & 0xFFF


# Implementer -> part -> name, from arch/arm64/include/asm/cputype.h (arm32 parts from
# arch/arm/include/asm/cputype.h). Only names: relative speed comes from capacity and frequency.
ARM_IMPLEMENTERS = {0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x48: "HiSilicon",
                    0x4E: "NVIDIA", 0x51: "Qualcomm", 0x61: "Apple"}
ARM_PARTS = {
    0x41: {0xC07: "A7", 0xC09: "A9", 0xC0D: "A12", 0xC0E: "A17", 0xC0F: "A15",
           0xD03: "A53", 0xD04: "A35", 0xD05: "A55", 0xD07: "A57", 0xD08: "A72", 0xD09: "A73",
           0xD0A: "A75", 0xD0B: "A76", 0xD0C: "Neoverse-N1", 0xD0D: "A77", 0xD40: "Neoverse-V1",
           0xD41: "A78", 0xD44: "X1", 0xD46: "A510", 0xD47: "A710", 0xD48: "X2",
           0xD49: "Neoverse-N2", 0xD4D: "A715", 0xD4E: "X3", 0xD80: "A520", 0xD81: "A720",
           0xD82: "X4"},
    # NOTE: cputype.h calls 0x003 "DENVER"; it is the Denver2 of Tegra X2 (Parker).
    0x4E: {0x003: "Denver2", 0x004: "Carmel"},
    # NOTE: 0x800 is both Kryo 2xx Gold and Falkor V1 in cputype.h; phones (the edge boards) are Kryo.
    0x51: {0x200: "Kryo", 0x800: "Kryo2xx-Gold", 0x801: "Kryo2xx-Silver", 0x802: "Kryo3xx-Gold",
           0x803: "Kryo3xx-Silver", 0x804: "Kryo4xx-Gold", 0x805: "Kryo4xx-Silver",
           0xC00: "Falkor"},
}


def arm_core_name(implementer: int, part: int) -> str:
    """A short core name (``"A53"``) or, for a part not in the table, ``"ARM-0xd4f"``."""
    name = ARM_PARTS.get(implementer, {}).get(part)
    if name:
        return name
    vendor = ARM_IMPLEMENTERS.get(implementer, f"0x{implementer:02x}")
    return f"{vendor}-0x{part:03x}"


# --- the reader ---------------------------------------------------------------------------------

class SysfsReader:
    """Every sysfs and procfs read of tunerd goes through here.

    ``read_*`` return ``default`` when the file is missing or unreadable and raise PlatformError
    (naming the file) when it holds junk.
    """

    def __init__(self, sysfs_root: str | os.PathLike = "/sys", proc_root: str | os.PathLike | None = None):
        self.sysfs_root = Path(sysfs_root)
        self.proc_root = Path(proc_root) if proc_root is not None else self.sysfs_root.parent / "proc"

    def __repr__(self) -> str:
        return f"SysfsReader(sysfs_root={str(self.sysfs_root)!r}, proc_root={str(self.proc_root)!r})"

    def path(self, rel: str) -> Path:
        return self.sysfs_root / rel

    def exists(self, rel: str) -> bool:
        return self.path(rel).exists()

    def read_text(self, rel: str, default: str | None = None) -> str | None:
        return read_file(self.path(rel), default)

    def read_int(self, rel: str, default: int | None = None) -> int | None:
        return read_parsed(self.path(rel), parse_int, default)

    def read_cpus(self, rel: str, default: list[int] | None = None) -> list[int] | None:
        return read_parsed(self.path(rel), parse_cpu_list, default)

    def numbered(self, rel: str, prefix: str) -> list[tuple[int, str]]:
        """Entries ``PREFIXN`` of a directory as sorted (N, name): ``cpu0``..., ``policy4``...

        A missing directory is an empty list (no cpufreq driver: no ``cpufreq/`` at all).
        """
        try:
            names = os.listdir(self.path(rel))
        except OSError as err:
            log.debug("cannot list %s: %s", self.path(rel), err)
            return []
        pattern = re.compile(re.escape(prefix) + r"(\d+)")
        found = [(int(m.group(1)), name) for name in names if (m := pattern.fullmatch(name))]
        return sorted(found)

    def read_proc(self, name: str, default: str | None = None) -> str | None:
        return read_file(self.proc_root / name, default)


def read_file(path: Path, default: str | None = None) -> str | None:
    """The text of ``path``, or ``default`` when it cannot be read (missing, permission, EIO...)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        log.debug("cannot read %s: %s", path, err)
        return default
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PlatformError(f"{path}: not text ({err})") from err


def read_parsed(path: Path, parse: Callable[[str], T], default: T | None = None) -> T | None:
    """``parse(text of path)``; ``default`` when unreadable; PlatformError naming the file on junk."""
    text = read_file(path)
    if text is None:
        return default
    try:
        return parse(text)
    except ValueError as err:
        raise PlatformError(f"{path}: {err}") from err


def read_positive_int(path: str | os.PathLike) -> int | None:
    """For per-frame hot paths: the positive integer in ``path``, else None; never raises.

    Missing, unreadable, empty (a writer mid-update), junk or <= 0 all give None: the caller falls
    back to its nominal value rather than fail a frame.
    """
    try:
        with open(path, "rb") as fh:
            value = int(fh.read().strip() or b"0")
    except (OSError, ValueError) as err:
        log.debug("%s: %s", path, err)
        return None
    return value if value > 0 else None
