"""Fake sysfs/procfs trees of real boards, and emulated cpufreq files, for tests and emulation.

A fake tree is a fake filesystem root: ``ROOT/sys/...`` plays ``/sys`` and ``ROOT/proc/cpuinfo``
plays ``/proc/cpuinfo``. The writers return the sysfs root (``ROOT/sys``), the directory to give as
``--sysfs-root``; the reader finds ``cpuinfo`` next to it (tunerd.platform.sysfs). File contents follow the
kernel's formats: ranged lists in ``online``, space-separated ``related_cpus``, kHz, m°C.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from .spec import PlatformSpec, parse_platform_spec
from .sysfs import CPU_DIR, CPUFREQ_DIR, THERMAL_DIR, format_cpu_list


@dataclass(frozen=True)
class FakePolicy:
    """CPUs of one core type sharing one cpufreq policy (policyN, N = the first CPU)."""
    cpus: tuple[int, ...]
    part: int                       # MIDR PartNum, e.g. 0xd03 for A53
    implementer: int = 0x41         # ARM
    variant: int = 0
    revision: int = 0
    max_khz: int | None = None
    min_khz: int | None = None
    capacity: int | None = None


@dataclass(frozen=True)
class FakeZone:
    type: str
    temp_mc: int
    trips: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class FakeBoard:
    name: str
    arch: str                        # "arm64" (has midr_el1), "arm32" or "x86"
    policies: tuple[FakePolicy, ...]
    cpufreq: bool = True
    model_name: str = ""             # arm32 / x86 "model name"
    hardware: str = ""               # arm32 trailer "Hardware"
    zones: tuple[FakeZone, ...] = ()
    # SMT: the cores with several hardware threads, e.g. ((0, 1), (2, 3)); a CPU in none is a core
    # of its own. With topology, every CPU gets topology/thread_siblings_list and core_cpus_list.
    smt: tuple[tuple[int, ...], ...] = ()
    topology: bool = False
    pmus: tuple[tuple[str, tuple[int, ...]], ...] = ()   # x86 hybrid: ("cpu_core", CPUs), ("cpu_atom", CPUs)
    driver: str = ""                 # scaling_driver of every policy (intel_pstate, acpi-cpufreq)
    vendor: str = "GenuineIntel"     # x86 vendor_id

    def siblings(self, cpu: int) -> tuple[int, ...]:
        return next((core for core in self.smt if cpu in core), (cpu,))

    @property
    def cpus(self) -> list[int]:
        return sorted(cpu for p in self.policies for cpu in p.cpus)


_SOC_TRIPS = ((65000, "passive"), (75000, "passive"), (105000, "critical"))

BOARDS: dict[str, FakeBoard] = {b.name: b for b in (
    # HiKey 970 (Kirin 970, arm64): the A73 cluster is capacity 1024, the A53 cluster ~462.
    FakeBoard("hikey970", "arm64", (
        FakePolicy((0, 1, 2, 3), 0xD03, revision=4, max_khz=1844000, min_khz=509000, capacity=462),
        FakePolicy((4, 5, 6, 7), 0xD09, variant=1, revision=2, max_khz=2362000, min_khz=682000,
                   capacity=1024)),
        zones=(FakeZone("soc_thermal", 47000, _SOC_TRIPS), FakeZone("cls0", 45000))),
    # ODROID-XU3 (Exynos 5422, arm32: no midr_el1, core parts only in cpuinfo).
    FakeBoard("odroid-xu3", "arm32", (
        FakePolicy((0, 1, 2, 3), 0xC07, revision=3, max_khz=1400000, min_khz=200000, capacity=377),
        FakePolicy((4, 5, 6, 7), 0xC0F, variant=2, revision=3, max_khz=2000000, min_khz=200000,
                   capacity=1024)),
        model_name="ARMv7 Processor rev 3 (v7l)", hardware="Hardkernel ODROID-XU3",
        zones=tuple(FakeZone(f"cpu{i}-thermal", 52000 + 1000 * i,
                             ((60000, "active"), (70000, "active"), (120000, "critical")))
                    for i in range(4)) + (FakeZone("gpu-thermal", 50000),)),
    # Jetson TX2 (Tegra X2, arm64): Denver2 cpus 1-2 sit between A57 cpus 0 and 3-5; both policies
    # run to 2.0 GHz and there is no cpu_capacity, so only the core type tells them apart.
    FakeBoard("jetson-tx2", "arm64", (
        FakePolicy((0, 3, 4, 5), 0xD07, variant=1, revision=3, max_khz=2035200, min_khz=345600),
        FakePolicy((1, 2), 0x003, implementer=0x4E, revision=0, max_khz=2035200, min_khz=345600)),
        zones=(FakeZone("BCPU-therm", 41500, ((96500, "critical"),)),
               FakeZone("MCPU-therm", 41000, ((96500, "critical"),)),
               FakeZone("GPU-therm", 40500, ((97500, "critical"),)),
               FakeZone("thermal-fan-est", 41200, ((51000, "active"), (61000, "active"))))),
    # A cloud VM: no cpufreq, no cpu_capacity, no thermal zones; cpuinfo names the model.
    FakeBoard("x86-vm", "x86", (FakePolicy((0, 1), 0, implementer=0),), cpufreq=False,
              model_name="Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz"),
    # A Snapdragon 855-class phone (SM8150, Kryo 485): 4 silver (0x805, 1.79 GHz), 3 gold and 1 prime
    # (both 0x804, the A76-derived core: 2.42 and 2.84 GHz) in three policies. cpu_capacity as the
    # kernel derives it from the DT's capacity-dmips-mhz (silver 488, gold 1024) x each policy's
    # maximum, normalised to the prime.
    FakeBoard("sd855", "arm64", (
        FakePolicy((0, 1, 2, 3), 0x805, implementer=0x51, variant=0x7, revision=0xE,
                   max_khz=1785600, min_khz=300000, capacity=307),
        FakePolicy((4, 5, 6), 0x804, implementer=0x51, variant=0xD, revision=0xE,
                   max_khz=2419200, min_khz=710400, capacity=871),
        FakePolicy((7,), 0x804, implementer=0x51, variant=0xD, revision=0xE,
                   max_khz=2841600, min_khz=825600, capacity=1024)),
        topology=True,
        zones=(FakeZone("cpu-0-0-usr", 38000, ((95000, "passive"), (115000, "critical"))),
               FakeZone("cpu-1-0-usr", 40000, ((95000, "passive"), (115000, "critical"))))),
    # RK3588: 4 A55 (1.8 GHz) in one policy, 4 A76 (2.4 GHz) in two policies of two; capacity from
    # the DT (A55 530, A76 1024).
    FakeBoard("rk3588", "arm64", (
        FakePolicy((0, 1, 2, 3), 0xD05, variant=2, max_khz=1800000, min_khz=408000, capacity=530),
        FakePolicy((4, 5), 0xD0B, variant=4, max_khz=2400000, min_khz=408000, capacity=1024),
        FakePolicy((6, 7), 0xD0B, variant=4, max_khz=2400000, min_khz=408000, capacity=1024)),
        topology=True,
        zones=(FakeZone("soc-thermal", 43000, ((75000, "passive"), (85000, "passive"), (115000, "critical"))),
               FakeZone("bigcore0-thermal", 44000), FakeZone("bigcore2-thermal", 44000),
               FakeZone("littlecore-thermal", 42000))),
    # An Intel hybrid laptop part (Alder Lake-P class, 4 P-cores with two threads each + 8 E-cores):
    # intel_pstate, one policy per CPU, no cpu_capacity, one "model name" for both kinds; the kinds
    # are the cpu_core / cpu_atom PMUs. One P-core (cpus 2-3) is a "favoured" core 100 MHz above
    # the others, as parts with Turbo Boost Max 3.0 report it.
    FakeBoard("intel-hybrid", "x86", tuple(
        FakePolicy((cpu,), 0, implementer=0, max_khz=4700000 if cpu in (2, 3) else 4600000, min_khz=400000)
        for cpu in range(8)) + tuple(
        FakePolicy((cpu,), 0, implementer=0, max_khz=3400000, min_khz=400000) for cpu in range(8, 16)),
        model_name="12th Gen Intel(R) Core(TM) i7-1260P", topology=True, driver="intel_pstate",
        smt=((0, 1), (2, 3), (4, 5), (6, 7)), pmus=(("cpu_core", tuple(range(8))), ("cpu_atom", tuple(range(8, 16)))),
        zones=(FakeZone("x86_pkg_temp", 52000, ((0, "passive"),)), FakeZone("acpitz", 45000, ((103000, "critical"),)))),
    # An SMT desktop without hybrid (Ryzen 7 5800X class): 8 cores, 16 threads, the second threads
    # numbered after the first (siblings 0,8 1,9 ...), acpi-cpufreq with one policy per CPU.
    FakeBoard("smt-desktop", "x86", tuple(
        FakePolicy((cpu,), 0, implementer=0, max_khz=3800000, min_khz=2200000) for cpu in range(16)),
        model_name="AMD Ryzen 7 5800X 8-Core Processor", topology=True, driver="acpi-cpufreq",
        vendor="AuthenticAMD", smt=tuple((core, core + 8) for core in range(8))),
)}


def make_tree(board: str | FakeBoard, root: str | os.PathLike, *, online=None) -> Path:
    """Write the fake tree of ``board`` (a name in BOARDS or a FakeBoard) under ``root``.

    ``online`` (CPU numbers) takes CPUs offline as hotplug would: out of ``online``, ``cpuN/online``
    0, out of ``affected_cpus`` and cpuinfo; their policy stays. Returns the sysfs root.
    """
    if isinstance(board, str):
        if board not in BOARDS:
            raise ConfigError(f"unknown fake board {board!r} (known: {', '.join(sorted(BOARDS))})")
        board = BOARDS[board]
    sys_root = Path(root) / "sys"
    cpu_dir = sys_root / CPU_DIR
    online = board.cpus if online is None else sorted(set(online))
    unknown = sorted(set(online) - set(board.cpus))
    if unknown:
        raise ConfigError(f"CPUs {format_cpu_list(unknown)} are not on fake board {board.name!r} "
                          f"(it has {format_cpu_list(board.cpus)})")
    for name in ("possible", "present"):
        write(cpu_dir / name, format_cpu_list(board.cpus))
    write(cpu_dir / "online", format_cpu_list(online))
    for policy in board.policies:
        for cpu in policy.cpus:
            if cpu != 0:  # cpu0 has no online file on most arm boards: it cannot be unplugged
                write(cpu_dir / f"cpu{cpu}" / "online", "1" if cpu in online else "0")
            if board.topology and cpu in online:
                # NOTE: an offline CPU has no topology directory; the lists hold online threads only
                threads = [t for t in board.siblings(cpu) if t in online]
                for name in ("thread_siblings_list", "core_cpus_list"):
                    write(cpu_dir / f"cpu{cpu}" / "topology" / name, format_cpu_list(threads))
            if policy.capacity is not None:
                write(cpu_dir / f"cpu{cpu}" / "cpu_capacity", str(policy.capacity))
            if board.arch == "arm64":
                write(cpu_dir / f"cpu{cpu}" / "regs" / "identification" / "midr_el1", f"0x{_midr(policy):016x}")
        if board.cpufreq:
            _write_policy(sys_root, policy.cpus, [c for c in policy.cpus if c in online],
                          policy.max_khz, policy.min_khz, board.driver)
    for pmu, cpus in board.pmus:
        write(sys_root / "devices" / pmu / "cpus", format_cpu_list(cpus))
    write(Path(root) / "proc" / "cpuinfo", _cpuinfo(board, online))
    for i, zone in enumerate(board.zones):
        zdir = sys_root / THERMAL_DIR / f"thermal_zone{i}"
        write(zdir / "type", zone.type)
        write(zdir / "temp", str(zone.temp_mc))
        for k, (temp, kind) in enumerate(zone.trips):
            write(zdir / f"trip_point_{k}_temp", str(temp))
            write(zdir / f"trip_point_{k}_type", kind)
    return sys_root


def make_emulated_tree(spec: str | PlatformSpec, root: str | os.PathLike, max_khz: int = 2_000_000) -> Path:
    """Write one cpufreq policy per emulated cluster under ``root/sys``, all at ``max_khz``.

    Only the policy files DESIGN.md names; CPUs are not checked against this machine (the tree may
    be made for another). Returns the sysfs root.
    """
    parsed = spec if isinstance(spec, PlatformSpec) else parse_platform_spec(spec)
    if parsed.kind != "emulate":
        raise ConfigError(f"{parsed.text!r} is not an emulate: spec")
    if int(max_khz) <= 0:
        raise ConfigError(f"max_khz must be > 0, got {max_khz}")
    sys_root = Path(root) / "sys"
    for cluster in parsed.clusters:
        _write_policy(sys_root, cluster.cpus, cluster.cpus, int(max_khz), int(max_khz) // 10)
    return sys_root


def set_emulated_freq(sysfs_root: str | os.PathLike, cluster_first_cpu: int, khz: int) -> None:
    """Emulate DVFS/throttling: set ``scaling_max_freq`` and ``scaling_cur_freq`` of policyN to ``khz``.

    Files are replaced atomically, so a worker reading them mid-update never sees an empty file.
    """
    policy = Path(sysfs_root) / CPUFREQ_DIR / f"policy{cluster_first_cpu}"
    if not policy.is_dir():
        raise ConfigError(f"no emulated cpufreq policy for CPU {cluster_first_cpu} under {sysfs_root} "
                          f"(CPU {cluster_first_cpu} must be the first CPU of a cluster)")
    hw_max = int((policy / "cpuinfo_max_freq").read_text().strip() or 0)
    if not 0 < int(khz) <= hw_max:
        raise ConfigError(f"frequency {khz} kHz is outside 1..{hw_max} kHz (cpuinfo_max_freq)")
    for name in ("scaling_max_freq", "scaling_cur_freq"):
        write(policy / name, str(int(khz)))


def _write_policy(sys_root: Path, cpus, online_cpus, max_khz, min_khz, driver: str = "") -> None:
    policy = sys_root / CPUFREQ_DIR / f"policy{cpus[0]}"
    write(policy / "related_cpus", " ".join(map(str, cpus)))
    write(policy / "affected_cpus", " ".join(map(str, online_cpus)))
    if max_khz is not None:
        for name in ("cpuinfo_max_freq", "scaling_max_freq", "scaling_cur_freq"):
            write(policy / name, str(max_khz))
    if min_khz is not None:
        for name in ("cpuinfo_min_freq", "scaling_min_freq"):
            write(policy / name, str(min_khz))
    write(policy / "scaling_governor", "powersave" if driver == "intel_pstate" else "schedutil")
    if driver:
        write(policy / "scaling_driver", driver)


def _midr(policy: FakePolicy) -> int:
    # MIDR_EL1: Implementer[31:24] Variant[23:20] Architecture[19:16]=0xf PartNum[15:4] Revision[3:0]
    return ((policy.implementer << 24) | (policy.variant << 20) | (0xF << 16)
            | (policy.part << 4) | policy.revision)


def _cpuinfo(board: FakeBoard, online) -> str:
    by_cpu = {cpu: p for p in board.policies for cpu in p.cpus}
    blocks = []
    for cpu in online:
        p = by_cpu[cpu]
        if board.arch == "x86":
            blocks.append(f"processor\t: {cpu}\nvendor_id\t: {board.vendor}\ncpu family\t: 6\nmodel\t\t: 106\n"
                          f"model name\t: {board.model_name}\nstepping\t: 6\ncpu MHz\t\t: 2899.968\n"
                          f"flags\t\t: fpu vme de pse tsc msr pae mce avx2 avx512f\npower management:\n")
            continue
        lines = [f"processor\t: {cpu}"]
        if board.model_name:
            lines.append(f"model name\t: {board.model_name}")
        lines += ["BogoMIPS\t: 3.84", "Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid",
                  f"CPU implementer\t: 0x{p.implementer:02x}",
                  f"CPU architecture: {7 if board.arch == 'arm32' else 8}",
                  f"CPU variant\t: 0x{p.variant:x}", f"CPU part\t: 0x{p.part:03x}",
                  f"CPU revision\t: {p.revision}"]
        blocks.append("\n".join(lines) + "\n")
    if board.hardware:
        blocks.append(f"Hardware\t: {board.hardware}\nRevision\t: 0000\nSerial\t\t: 0000000000000000\n")
    return "\n".join(blocks)


def write(path: Path, text: str) -> None:
    """Write ``text`` + newline (sysfs attributes end in one) to ``path`` atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
