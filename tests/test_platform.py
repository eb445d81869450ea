"""Platform discovery, emulation and the `tunerd platform` command, on fake trees of real boards."""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
from pathlib import Path

import pytest

from tunerd.commands import cli
from tunerd.errors import ConfigError, HintsError, PlatformError
from tunerd.platform.fakesysfs import FakeBoard, FakePolicy, make_emulated_tree, set_emulated_freq
from tunerd.daemon.monitor import Monitor, MonitorConfig
from tunerd.platform.clusters import Cluster, cluster_names, effective_speed
from tunerd.platform.discovery import discover
from tunerd.platform.spec import parse_platform_spec, resolve_platform
from tunerd.platform.sysfs import (SysfsReader, arm_core_name, format_cpu_list, parse_cpu_list, parse_cpuinfo,
                          parse_int, parse_midr)

CPU = "devices/system/cpu"
POLICY = f"{CPU}/cpufreq/policy"

# --- pure parsers -------------------------------------------------------------------------------


@pytest.mark.parametrize("text, cpus", [
    ("0-3,8\n", [0, 1, 2, 3, 8]), ("", []), ("  \n", []), ("5", [5]), ("0 1 2 3\n", [0, 1, 2, 3]),
    ("0 3 4 5", [0, 3, 4, 5]), ("4-7,0-1", [0, 1, 4, 5, 6, 7]), ("2,2,1-2", [1, 2]),
])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


@pytest.mark.parametrize("junk", ["a", "3-1", "0-", "-1", "0x3", "1;2", "0-3:2"])
def test_parse_cpu_list_rejects_junk(junk):
    with pytest.raises(ValueError, match="CPU list"):
        parse_cpu_list(junk)


def test_format_cpu_list():
    assert format_cpu_list([8, 0, 1, 2, 3]) == "0-3,8"
    assert format_cpu_list([]) == ""
    assert format_cpu_list((0, 3, 4, 5)) == "0,3-5"


def test_parse_int():
    assert parse_int("1844000\n") == 1844000
    assert parse_int(" 0x4e ") == 0x4E
    for junk in ("", "fast", "1.5", "0xzz"):
        with pytest.raises(ValueError, match="integer"):
            parse_int(junk)


ARM64_CPUINFO = """processor\t: 0
BogoMIPS\t: 3.84
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd03
CPU revision\t: 4

processor\t: 4
CPU implementer\t: 0x41
CPU part\t: 0xd09
"""

ARM32_CPUINFO = """processor\t: 0
model name\t: ARMv7 Processor rev 3 (v7l)
CPU implementer\t: 0x41
CPU part\t: 0xc07
processor\t: 1
model name\t: ARMv7 Processor rev 3 (v7l)
CPU part\t: 0xc0f

Hardware\t: Hardkernel ODROID-XU3
Serial\t\t: 0000000000000000
"""

X86_CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
power management:

"""


def test_parse_cpuinfo_blocks():
    per_cpu, common = parse_cpuinfo(ARM64_CPUINFO)
    assert sorted(per_cpu) == [0, 4]
    assert per_cpu[0]["CPU part"] == "0xd03" and per_cpu[0]["CPU architecture"] == "8"
    assert per_cpu[4]["CPU part"] == "0xd09" and common == {}
    # arm32: no blank line between processors here, and a trailer outside any processor.
    per_cpu, common = parse_cpuinfo(ARM32_CPUINFO)
    assert per_cpu[1]["CPU part"] == "0xc0f" and common["Hardware"] == "Hardkernel ODROID-XU3"
    per_cpu, _ = parse_cpuinfo(X86_CPUINFO)
    assert per_cpu[0]["model name"] == "AMD EPYC 7B13" and per_cpu[0]["power management"] == ""


@pytest.mark.parametrize("junk", ["processor : 0\nthis line has no colon\n", "processor : zero\n",
                                  ": value without key\n"])
def test_parse_cpuinfo_rejects_junk(junk):
    with pytest.raises(ValueError, match="cpuinfo"):
        parse_cpuinfo(junk)


def test_parse_midr_and_core_names():
    assert parse_midr("0x00000000410fd034\n") == (0x41, 0xD03)
    assert parse_midr("0x000000004e0f0030") == (0x4E, 0x003)
    assert arm_core_name(0x41, 0xD09) == "A73" and arm_core_name(0x4E, 0x003) == "Denver2"
    assert arm_core_name(0x41, 0xC07) == "A7" and arm_core_name(0x51, 0x805) == "Kryo4xx-Silver"
    assert arm_core_name(0x41, 0xFFF) == "ARM-0xfff" and arm_core_name(0x99, 0x1) == "0x99-0x001"
    with pytest.raises(ValueError):
        parse_midr("MIDR")


def test_reader_fallbacks_and_roots(tmp_path):
    fs = SysfsReader(tmp_path / "sys")
    assert fs.proc_root == tmp_path / "proc"
    assert SysfsReader("/sys").proc_root == Path("/proc")
    assert fs.read_int("missing", default=7) == 7 and fs.read_cpus("missing") is None
    assert fs.numbered("no/such/dir", "cpu") == []
    (tmp_path / "sys").mkdir()
    (tmp_path / "sys" / "junk").write_text("12 kHz\n")
    with pytest.raises(PlatformError, match=r"sys/junk: expected an integer"):
        fs.read_int("junk")


def test_cluster_names():
    assert [cluster_names(n) for n in (1, 2, 3)] == [["big"], ["little", "big"], ["little", "mid", "big"]]
    assert cluster_names(4) == ["little", "mid0", "mid1", "big"]


# --- auto: discovery on fake trees of real boards -------------------------------------------------

BOARD_EXPECTED = {
    # name: [(cluster, core type, cpus, capacity, min kHz, max kHz)], thermal zone types
    "hikey970": ([("little", "A53", (0, 1, 2, 3), 462, 509000, 1844000),
                  ("big", "A73", (4, 5, 6, 7), 1024, 682000, 2362000)], ["soc_thermal", "cls0"]),
    "odroid-xu3": ([("little", "A7", (0, 1, 2, 3), 377, 200000, 1400000),
                    ("big", "A15", (4, 5, 6, 7), 1024, 200000, 2000000)],
                   ["cpu0-thermal", "cpu1-thermal", "cpu2-thermal", "cpu3-thermal", "gpu-thermal"]),
    "jetson-tx2": ([("little", "A57", (0, 3, 4, 5), None, 345600, 2035200),
                    ("big", "Denver2", (1, 2), None, 345600, 2035200)],
                   ["BCPU-therm", "MCPU-therm", "GPU-therm", "thermal-fan-est"]),
    "x86-vm": ([("big", "Intel(R) Xeon(R) Platinum 8375C CPU @ 2.90GHz", (0, 1), None, None, None)], []),
}


def summary(platform):
    return [(c.name, c.core_type, c.cpus, c.capacity, c.min_khz, c.max_khz) for c in platform.clusters]


@pytest.mark.parametrize("board", sorted(BOARD_EXPECTED))
def test_discover_boards(fake_sysfs, board):
    root = fake_sysfs(board)
    platform = discover(root)
    clusters, zones = BOARD_EXPECTED[board]
    assert platform.source == "auto" and summary(platform) == clusters
    assert [z.type for z in platform.thermal] == zones
    assert all(c.speed == 1.0 and c.cur_khz == c.max_khz for c in platform.clusters)
    assert platform.cpus == tuple(sorted(cpu for c in clusters for cpu in c[2]))
    assert platform.cluster("big").name == "big"


def test_thermal_zone_details(fake_sysfs):
    zone = discover(fake_sysfs("hikey970")).thermal[0]
    assert (zone.name, zone.temp_mc, zone.temp_c) == ("thermal_zone0", 47000, 47.0)
    assert [(t.temp_mc, t.type) for t in zone.trips] == [(65000, "passive"), (75000, "passive"),
                                                         (105000, "critical")]


def test_odroid_core_types_come_from_cpuinfo_alone(fake_sysfs, tmp_path):
    root = fake_sysfs("odroid-xu3")
    assert not list(root.glob("devices/system/cpu/cpu*/regs"))  # arm32: no midr_el1
    moved = tmp_path / "elsewhere"
    shutil.move(root.parent / "proc", moved)
    assert {c.core_type for c in discover(root).clusters} == {"unknown"}
    assert [c.core_type for c in discover(root, proc_root=moved).clusters] == ["A7", "A15"]


def test_no_capacity_orders_by_frequency(fake_sysfs):
    root = fake_sysfs("hikey970")
    for f in root.glob(f"{CPU}/cpu*/cpu_capacity"):
        f.unlink()
    assert summary(discover(root)) == [("little", "A53", (0, 1, 2, 3), None, 509000, 1844000),
                                      ("big", "A73", (4, 5, 6, 7), None, 682000, 2362000)]


def test_no_cpufreq_groups_by_capacity_and_core_type(fake_sysfs):
    root = fake_sysfs("hikey970")
    shutil.rmtree(root / CPU / "cpufreq")
    assert summary(discover(root)) == [("little", "A53", (0, 1, 2, 3), 462, None, None),
                                      ("big", "A73", (4, 5, 6, 7), 1024, None, None)]


def test_nothing_but_online_is_one_cluster(fake_sysfs):
    root = fake_sysfs("hikey970")
    shutil.rmtree(root / CPU / "cpufreq")
    shutil.rmtree(root.parent / "proc")
    for cpu in range(8):
        shutil.rmtree(root / CPU / f"cpu{cpu}" / "regs")
        (root / CPU / f"cpu{cpu}" / "cpu_capacity").unlink()
    assert summary(discover(root)) == [("big", "unknown", tuple(range(8)), None, None, None)]


def test_legacy_per_cpu_cpufreq_directories(fake_sysfs):
    root = fake_sysfs("odroid-xu3")
    policies = root / CPU / "cpufreq"
    for first, cpus in ((0, range(4)), (4, range(4, 8))):
        for cpu in cpus:
            shutil.copytree(policies / f"policy{first}", root / CPU / f"cpu{cpu}" / "cpufreq")
    shutil.rmtree(policies)
    assert summary(discover(root)) == BOARD_EXPECTED["odroid-xu3"][0]


def test_offline_cpus(fake_sysfs):
    tx2 = discover(fake_sysfs("jetson-tx2", online=[0, 3, 4, 5]))   # Denver cores unplugged
    assert summary(tx2) == [("big", "A57", (0, 3, 4, 5), None, 345600, 2035200)]
    hikey = discover(fake_sysfs("hikey970", online=[0, 1, 2, 3, 4, 6, 7]))
    assert hikey.cluster("big").cpus == (4, 6, 7)
    with pytest.raises(ConfigError, match="CPUs 8-9 are not on fake board 'hikey970'"):
        fake_sysfs("hikey970", online=range(10))


def test_cpus_outside_the_process_cpu_set_are_left_out(fake_sysfs):
    root = fake_sysfs("hikey970")
    platform = resolve_platform("auto", sysfs_root=root, available_cpus={0, 1, 4, 5})
    assert [(c.name, c.cpus) for c in platform.clusters] == [("little", (0, 1)), ("big", (4, 5))]
    assert [c.cores for c in resolve_platform("auto", sysfs_root=root).clusters] == [4, 4]   # a fake tree: all
    with pytest.raises(PlatformError, match="none of the online CPUs"):
        resolve_platform("auto", sysfs_root=root, available_cpus={9})


def test_online_from_cpu_directories(fake_sysfs):
    root = fake_sysfs("hikey970", online=[0, 1, 2, 3, 4, 5])
    (root / CPU / "online").unlink()
    assert discover(root).cpus == (0, 1, 2, 3, 4, 5)


def test_per_core_policies_of_one_kind_are_one_cluster(fake_sysfs):
    # x86 and arm64 servers have one cpufreq policy per core (acpi-cpufreq, intel_pstate, CPPC).
    board = FakeBoard("x86-pstate", "x86", tuple(
        FakePolicy((cpu,), 0, implementer=0, max_khz=3500000, min_khz=800000) for cpu in range(4)),
        model_name="Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz")
    assert summary(discover(fake_sysfs(board))) == [
        ("big", "Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", (0, 1, 2, 3), None, 800000, 3500000)]


@pytest.mark.parametrize("path, text, message", [
    (f"{CPU}/cpu5/cpu_capacity", "fast\n", "cpu5/cpu_capacity: expected an integer"),
    (f"{CPU}/online", "zero-three\n", "online: bad CPU list"),
    (f"{POLICY}4/related_cpus", "4 5 six\n", "related_cpus: bad CPU list"),
    (f"{POLICY}4/cpuinfo_max_freq", "2.36GHz\n", "cpuinfo_max_freq: expected an integer"),
    (f"{CPU}/cpu0/regs/identification/midr_el1", "A53\n", "midr_el1"),
    ("class/thermal/thermal_zone0/temp", "hot\n", "thermal_zone0/temp"),
    (f"{POLICY}4/related_cpus", "3 4 5 6 7\n", "CPU 3 is also in"),
])
def test_junk_in_a_file_is_a_clear_error(fake_sysfs, path, text, message):
    root = fake_sysfs("hikey970")
    (root / path).write_text(text)
    with pytest.raises(PlatformError, match=message) as info:
        discover(root)
    assert str(root) in str(info.value)


def test_junk_cpuinfo_costs_only_names(fake_sysfs, caplog):
    root = fake_sysfs("hikey970")
    (root.parent / "proc" / "cpuinfo").write_text("garbage without colons\n")
    with caplog.at_level(logging.WARNING, logger="tunerd.platform.discovery"):
        platform = discover(root)
    assert [c.core_type for c in platform.clusters] == ["A53", "A73"]   # midr_el1 still names them
    assert "cpuinfo" in caplog.text


def test_missing_files_never_raise(fake_sysfs):
    root = fake_sysfs("hikey970")
    (root / "class/thermal/thermal_zone0/temp").unlink()
    (root / f"{POLICY}4/scaling_cur_freq").unlink()
    (root / f"{POLICY}4/related_cpus").unlink()   # affected_cpus is the fallback
    platform = discover(root)
    assert platform.thermal[0].temp_mc is None and platform.thermal[0].to_dict()["temp_c"] is None
    assert platform.cluster("big").cur_khz is None and platform.cluster("big").cpus == (4, 5, 6, 7)


def test_bad_sysfs_roots(fake_sysfs, tmp_path):
    root = fake_sysfs("hikey970")
    with pytest.raises(PlatformError, match="did you mean .*sys"):
        discover(root.parent)
    with pytest.raises(PlatformError, match="no online CPUs"):
        discover(tmp_path / "empty")


def test_unknown_fake_board(tmp_path):
    with pytest.raises(ConfigError, match="unknown fake board 'pi5'.*hikey970"):
        from tunerd.platform.fakesysfs import make_tree
        make_tree("pi5", tmp_path)


# --- specs and emulation --------------------------------------------------------------------------

def test_parse_platform_specs():
    assert parse_platform_spec("auto").kind == "auto" and parse_platform_spec("").kind == "auto"
    spec = parse_platform_spec("emulate:big=0-3,6@1,little=4,5@0.25")
    assert [(c.name, c.cpus, c.speed) for c in spec.clusters] == [("big", (0, 1, 2, 3, 6), 1.0),
                                                                  ("little", (4, 5), 0.25)]
    board = parse_platform_spec("board:hikey970")
    assert (board.kind, board.board) == ("board", "hikey970")
    assert parse_platform_spec("boards/x.json").board == "boards/x.json"


@pytest.mark.parametrize("spec, message", [
    ("emulate:", "names no cluster"),
    ("emulate:big", "expected NAME=CPUS@SPEED"),
    ("emulate:big=0", "expected NAME=CPUS@SPEED"),
    ("emulate:big=0@1.0;little=1@0.5", "expected NAME=CPUS@SPEED"),
    ("emulate:big-1=0@1", "expected NAME=CPUS@SPEED"),
    ("emulate:big=x@1", "cluster 'big': bad CPU list"),
    ("emulate:big=@1", "cluster 'big' has no CPUs"),
    ("emulate:big=0@fast", "speed 'fast' is not a number"),
    ("emulate:big=0@0", "speed must be > 0"),
    ("emulate:big=0@-0.5", "speed must be > 0"),
    ("emulate:big=0@nan", "speed must be > 0"),
    ("emulate:big=0@1.5", "speed must be <= 1"),
    ("emulate:big=0@1,big=1@0.5", "named twice"),
    ("emulate:big=0-1@1,little=1@0.5", "CPU 1 is in both cluster 'big' and cluster 'little'"),
    ("hikey970", "unknown platform spec"),
    ("board:", "bad board name"),
])
def test_bad_platform_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        parse_platform_spec(spec)


def test_emulated_cpus_must_exist_here(tmp_path):
    with pytest.raises(ConfigError, match="CPU 2-3 is not available on this machine \\(available: 0-1\\)"):
        resolve_platform("emulate:big=0@1,little=1-3@0.5", sysfs_root=tmp_path, available_cpus={0, 1})


def test_emulated_platform_without_cpufreq_files(tmp_path):
    platform = resolve_platform("emulate:big=0@1.0,little=1@0.4", sysfs_root=tmp_path, available_cpus={0, 1})
    assert platform.source == "emulate" and platform.spec == "emulate:big=0@1.0,little=1@0.4"
    assert [(c.name, c.core_type, c.cpus, c.capacity, c.speed, c.max_khz) for c in platform.clusters] == [
        ("little", "emu@0.4", (1,), 410, 0.4, None), ("big", "emu@1", (0,), 1024, 1.0, None)]
    assert [effective_speed(c, tmp_path) for c in platform.clusters] == [0.4, 1.0]


def test_emulated_clusters_do_not_follow_the_hosts_own_cpufreq(tmp_path):
    # the host's /sys holds its real, governor-driven frequencies: they already act on the real
    # cores, so an emulated cluster over them keeps its nominal speed (a link to /sys is /sys)
    (tmp_path / "sys").symlink_to("/sys")
    platform = resolve_platform("emulate:big=0@1.0,little=1@0.4", sysfs_root=tmp_path / "sys",
                                available_cpus={0, 1})
    for c in platform.clusters:
        assert not c.follow_cpufreq and c.policy is None and c.max_khz is None
        assert c.policy_path("/sys", "scaling_cur_freq") is None
        assert effective_speed(c, "/sys") == c.speed
    mon = Monitor(platform, "/sys", MonitorConfig())
    assert mon.frequencies() == {"little": {"cur_khz": None, "max_khz": None},
                                 "big": {"cur_khz": None, "max_khz": None}}


def test_make_emulated_tree_files(fake_sysfs):
    root = fake_sysfs("emulate:big=0-3@1.0,little=4,5@0.5", max_khz=1_800_000)
    files = {p.name: p.read_text() for p in (root / f"{POLICY}4").iterdir()}
    assert files["related_cpus"] == files["affected_cpus"] == "4 5\n"
    assert files["cpuinfo_max_freq"] == files["scaling_max_freq"] == files["scaling_cur_freq"] == "1800000\n"
    assert files["cpuinfo_min_freq"] == "180000\n"
    assert (root / f"{POLICY}0/related_cpus").read_text() == "0 1 2 3\n"
    with pytest.raises(ConfigError, match="not an emulate"):
        make_emulated_tree("auto", root.parent)


def test_emulated_dvfs_changes_effective_speed_at_once(fake_sysfs):
    root = fake_sysfs("emulate:big=0@1.0,little=1@0.5")
    platform = resolve_platform("emulate:big=0@1.0,little=1@0.5", sysfs_root=root, available_cpus={0, 1})
    big, little = platform.cluster("big"), platform.cluster("little")
    assert (big.max_khz, big.min_khz, big.cur_khz) == (2_000_000, 200_000, 2_000_000)
    assert (effective_speed(big, root), effective_speed(little, root)) == (1.0, 0.5)
    set_emulated_freq(root, 1, 1_000_000)
    assert effective_speed(little, root) == 0.25 and effective_speed(big, root) == 1.0
    set_emulated_freq(root, 0, 1_500_000)
    assert effective_speed(big, root) == 0.75
    (root / f"{POLICY}0/scaling_cur_freq").write_text("500000\n")   # governor below the cap
    assert effective_speed(big, root) == 0.25
    (root / f"{POLICY}0/scaling_cur_freq").write_text("")           # a writer mid-update
    assert effective_speed(big, root) == 0.75
    (root / f"{POLICY}0/scaling_max_freq").write_text("junk\n")
    assert effective_speed(big, root) == 1.0                         # nothing usable: nominal
    set_emulated_freq(root, 1, 2_000_000)
    assert effective_speed(little, root) == 0.5


def test_effective_speed_reads_cpuinfo_max_when_unknown(fake_sysfs):
    root = fake_sysfs("emulate:little=1@0.5")
    set_emulated_freq(root, 1, 500_000)
    assert effective_speed(Cluster("little", "emu@0.5", (1,), speed=0.5), root) == 0.125


@pytest.mark.parametrize("cpu, khz, message", [(3, 1_000_000, "no emulated cpufreq policy for CPU 3"),
                                               (0, 3_000_000, "outside 1..2000000"),
                                               (0, 0, "outside")])
def test_set_emulated_freq_errors(fake_sysfs, cpu, khz, message):
    root = fake_sysfs("emulate:big=0@1.0,little=1@0.5")
    with pytest.raises(ConfigError, match=message):
        set_emulated_freq(root, cpu, khz)


def test_board_platforms(tmp_path):
    pytest.importorskip("tunerd.platform.boards")   # board files are read by tunerd.platform.boards (another part)
    board = {"name": "hikey970", "interconnect_gbs": 3.0, "clusters": [
        {"name": "little", "core_type": "A53", "cores": 4, "freq_mhz": 1800, "gflops_per_core": 3.6,
         "bandwidth_gbs": 4.0},
        {"name": "big", "core_type": "A73", "cores": 4, "freq_mhz": 2360, "gflops_per_core": 9.4,
         "bandwidth_gbs": 8.0}]}
    path = tmp_path / "hikey970.json"
    path.write_text(json.dumps(board))
    platform = resolve_platform(str(path))
    assert platform.source == "board" and platform.spec == str(path) and platform.thermal == ()
    assert [(c.name, c.core_type, c.cpus, c.max_khz) for c in platform.clusters] == [
        ("little", "A53", (0, 1, 2, 3), 1_800_000), ("big", "A73", (4, 5, 6, 7), 2_360_000)]
    path.write_text(json.dumps({"name": "x", "interconnect_gbs": 1, "clusters": [{"name": "big"}]}))
    with pytest.raises(HintsError, match="missing field"):
        resolve_platform(str(path))
    with pytest.raises(HintsError, match="unknown board 'no-such-board'"):
        resolve_platform("board:no-such-board")


# --- CLI ----------------------------------------------------------------------------------------

@pytest.fixture
def tunerd_main(monkeypatch):
    """cli.main with only this command registered, so sibling commands cannot break these tests."""
    assert "tunerd.commands.platform" in cli.COMMAND_MODULES
    monkeypatch.setattr(cli, "COMMAND_MODULES", ["tunerd.commands.platform"])
    return cli.main


def test_cli_table(tunerd_main, fake_sysfs, capsys):
    root = fake_sysfs("hikey970")
    assert tunerd_main(["platform", "--sysfs-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "source: auto"
    assert lines[1].split() == ["CLUSTER", "CORE", "CPUS", "CAPACITY", "MIN", "MHz", "CUR", "MHz",
                                "MAX", "MHz", "POLICIES", "SPEED", "EFF"]
    assert lines[2].split() == ["little", "A53", "0-3", "462", "509", "1844", "1844", "1", "1.00", "1.00"]
    assert lines[3].split() == ["big", "A73", "4-7", "1024", "682", "2362", "2362", "1", "1.00", "1.00"]
    assert lines[1].index("CPUS") == lines[2].index("0-3") == lines[3].index("4-7")   # aligned
    assert any(line.split()[:3] == ["thermal_zone0", "soc_thermal", "47.0"] for line in lines)


def test_cli_json(tunerd_main, fake_sysfs, capsys):
    root = fake_sysfs("jetson-tx2")
    assert tunerd_main(["platform", "--sysfs-root", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "auto"
    assert [set(c) for c in data["clusters"]] == [{"name", "core_type", "cpus", "capacity", "min_khz",
                                                  "cur_khz", "max_khz", "speed", "policy", "policies",
                                                  "smt_siblings", "effective_speed"}] * 2
    assert data["clusters"][1] == {"name": "big", "core_type": "Denver2", "cpus": [1, 2],
                                   "capacity": None, "min_khz": 345600, "cur_khz": 2035200,
                                   "max_khz": 2035200, "speed": 1.0,
                                   "policy": "devices/system/cpu/cpufreq/policy1",
                                   "policies": ["devices/system/cpu/cpufreq/policy1"], "smt_siblings": [],
                                   "effective_speed": 1.0}
    assert {"name", "type", "temp_c"} <= set(data["thermal"][0]) and data["thermal"][0]["temp_c"] == 41.5


def test_cli_emulated(tunerd_main, fake_sysfs, capsys):
    cpus = sorted(os.sched_getaffinity(0))
    spec = f"emulate:big={cpus[0]}@1.0" + (f",little={cpus[1]}@0.5" if len(cpus) > 1 else "")
    root = fake_sysfs(spec)
    set_emulated_freq(root, cpus[0], 1_000_000)
    assert tunerd_main(["platform", "--platform", spec, "--sysfs-root", str(root), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["source"] == "emulate" and data["clusters"][-1]["cur_khz"] == 1_000_000
    assert tunerd_main(["platform", "--platform", spec, "--sysfs-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"source: emulate  ({spec})")
    assert [line.split()[-2:] for line in out.splitlines() if line.startswith("big")] == [["1.00", "0.50"]]


@pytest.mark.parametrize("args, message", [
    (["--platform", "emulate:big=0@0"], "speed must be > 0"),
    (["--platform", "emulate:big=100000@1"], "not available on this machine"),
    (["--platform", "nonsense"], "unknown platform spec"),
])
def test_cli_errors_are_one_line(tunerd_main, capsys, tmp_path, args, message):
    assert tunerd_main(["platform", "--sysfs-root", str(tmp_path), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tunerd platform: ") and message in err and err.count("\n") == 1


def test_cli_fake_root_given_for_sysfs_root(tunerd_main, fake_sysfs, capsys):
    root = fake_sysfs("x86-vm")
    assert tunerd_main(["platform", "--sysfs-root", str(root.parent)]) == 1
    assert "did you mean" in capsys.readouterr().err


def test_make_sysfs_script(tmp_path, capsys):
    path = Path(__file__).resolve().parent.parent / "tools" / "make_sysfs.py"
    spec = importlib.util.spec_from_file_location("make_sysfs", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    assert tool.main(["jetson-tx2", str(tmp_path / "tx2"), "--online", "0,3-5"]) == 0
    root = Path(capsys.readouterr().out.strip())
    assert root == tmp_path / "tx2" / "sys" and discover(root).cpus == (0, 3, 4, 5)
    assert tool.main(["emulate:big=0@1.0,little=1@0.5", str(tmp_path / "emu")]) == 0
    assert (tmp_path / "emu/sys" / f"{POLICY}1" / "scaling_cur_freq").read_text() == "2000000\n"
    assert tool.main(["pi5", str(tmp_path / "x")]) == 1
    assert "unknown fake board" in capsys.readouterr().err
