"""Platforms as they are: tri-cluster phones, split frequency domains, Intel hybrid, SMT, offline CPUs
and a restricted CPU set, discovered on fake trees of real machines (tunerd.platform.fakesysfs)."""
from __future__ import annotations

import json

import pytest

from tunerd.commands import cli
from tunerd.daemon.monitor import CPUFREQ, Monitor, MonitorConfig
from tunerd.errors import PlatformError
from tunerd.pipeconfig import assign_cpus, parse_config
from tunerd.platform.clusters import effective_speed
from tunerd.platform.discovery import discover
from tunerd.platform.fakesysfs import write
from tunerd.platform.spec import resolve_platform

CPU = "devices/system/cpu"
POLICY = f"{CPU}/cpufreq/policy"
P = "12th Gen Intel(R) Core(TM) i7-1260P"


def policies(*cpus):
    return tuple(f"{POLICY}{cpu}" for cpu in cpus)


EXPECTED = {
    # board: [(name, core type, cpus, max kHz, followed policies, SMT siblings)]
    "sd855": [("silver", "Kryo4xx-Silver", (0, 1, 2, 3), 1785600, policies(0), ()),
              ("gold", "Kryo4xx-Gold", (4, 5, 6), 2419200, policies(4), ()),
              ("prime", "Kryo4xx-Gold", (7,), 2841600, policies(7), ())],
    "rk3588": [("little", "A55", (0, 1, 2, 3), 1800000, policies(0), ()),
               ("big", "A76", (4, 5, 6, 7), 2400000, policies(4, 6), ())],
    "intel-hybrid": [("e-core", f"{P} E-core", tuple(range(8, 16)), 3400000, policies(*range(8, 16)), ()),
                     ("p-core", f"{P} P-core", (0, 2, 4, 6), 4600000, policies(*range(8)),
                      ((0, 1), (2, 3), (4, 5), (6, 7)))],
    "smt-desktop": [("big", "AMD Ryzen 7 5800X 8-Core Processor", tuple(range(8)), 3800000, policies(*range(16)),
                     tuple((c, c + 8) for c in range(8)))],
}


def summary(platform):
    return [(c.name, c.core_type, c.cpus, c.max_khz, c.followed_policies, c.smt_siblings)
            for c in platform.clusters]


@pytest.mark.parametrize("board", sorted(EXPECTED))
def test_discover_todays_boards(fake_sysfs, board):
    root = fake_sysfs(board)
    platform = discover(root)
    assert summary(platform) == EXPECTED[board]
    assert all(effective_speed(c, root) == 1.0 for c in platform.clusters)


def test_gold_and_prime_are_one_core_type_in_two_clusters(fake_sysfs):
    platform = discover(fake_sysfs("sd855"))
    gold, prime = platform.cluster("gold"), platform.cluster("prime")
    assert gold.core_type == prime.core_type and (gold.cores, prime.cores) == (3, 1)
    assert gold.capacity < prime.capacity


def test_names_fall_back_to_speed_when_kinds_do_not_name_every_cluster(fake_sysfs):
    # the prime core unplugged: a silver and a gold cluster remain
    assert [c.name for c in discover(fake_sysfs("sd855", online=range(7))).clusters] == ["silver", "gold"]
    # only the P-cores in the CPU set: one cluster is "big", as on every machine
    hybrid = resolve_platform("auto", sysfs_root=fake_sysfs("intel-hybrid"), available_cpus=set(range(8)))
    assert [(c.name, c.cpus) for c in hybrid.clusters] == [("big", (0, 2, 4, 6))]


def test_split_policy_throttled_is_seen(fake_sysfs):
    """RK3588: capping the second A76 pair to half (what thermal throttling does) slows the cluster."""
    root = fake_sysfs("rk3588")
    platform = discover(root)
    big = platform.cluster("big")
    clock = [0.0]
    monitor = Monitor(platform, root, MonitorConfig(debounce_s=1.0), clock=lambda: clock[0])
    assert monitor.freq_state() == "big=2400000/2400000,little=1800000"
    for name in ("scaling_max_freq", "scaling_cur_freq"):
        write(root / f"{POLICY}6" / name, "1200000")
    assert effective_speed(big, root) == pytest.approx(0.5)
    assert monitor.speed_factors()["big"] == pytest.approx(0.5)
    assert monitor.sample() == []          # seen, not yet lasting
    clock[0] += 1.5
    events = monitor.sample()
    assert [(e.kind, e.source) for e in events] == [(CPUFREQ, "big")]
    assert "2400000/2400000 -> 2400000/1200000" in events[0].detail
    assert monitor.frequencies()["big"] == {"cur_khz": 1200000, "max_khz": 1200000}
    assert monitor.freq_state() == "big=2400000/1200000,little=1800000"


def test_any_policy_of_a_merged_cluster_is_followed(fake_sysfs):
    root = fake_sysfs("intel-hybrid")
    pcore = discover(root).cluster("p-core")
    write(root / f"{POLICY}5" / "scaling_max_freq", "2300000")   # the second thread of one P-core
    assert effective_speed(pcore, root) == pytest.approx(0.5)
    write(root / f"{POLICY}3" / "scaling_max_freq", "1175000")   # the favoured core, 4.7 GHz
    assert effective_speed(pcore, root) == pytest.approx(0.25)


def test_offline_cpus_and_a_restricted_cpu_set(fake_sysfs):
    # SMT desktop: the second thread of core 3 offline, core 7 (cpus 7 and 15) outside the cpuset
    root = fake_sysfs("smt-desktop", online=[c for c in range(16) if c != 11])
    platform = resolve_platform("auto", sysfs_root=root, available_cpus=set(range(16)) - {7, 15})
    (cluster,) = platform.clusters
    assert cluster.cpus == (0, 1, 2, 3, 4, 5, 6) and cluster.cores == 7
    assert cluster.smt_siblings == ((0, 8), (1, 9), (2, 10), (3,), (4, 12), (5, 13), (6, 14))
    assert cluster.threads == (0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 12, 13, 14)
    assert cluster.followed_policies == policies(*(c for c in range(16) if c not in (7, 11, 15)))
    # RK3588 with one A76 offline and the little cores outside the cpuset
    rk = resolve_platform("auto", sysfs_root=fake_sysfs("rk3588", online=range(7)), available_cpus=set(range(4, 8)))
    assert summary(rk) == [("big", "A76", (4, 5, 6), 2400000, policies(4, 6), ())]


def test_a_stage_of_n_cores_takes_n_physical_cores(fake_sysfs):
    platform = discover(fake_sysfs("intel-hybrid"))
    config = parse_config("0-3@p-core:2 | 4-7@p-core:2 | 8-9@e-core:8")
    assert assign_cpus(config, platform.clusters) == [[(0, 2)], [(4, 6)], [tuple(range(8, 16))]]


@pytest.mark.parametrize("text, message", [("0-1,zz", "bad CPU list"), ("1", "not among its own siblings")])
def test_junk_thread_siblings_are_a_clear_error(fake_sysfs, text, message):
    root = fake_sysfs("smt-desktop")
    (root / CPU / "cpu0" / "topology" / "thread_siblings_list").write_text(text + "\n")
    with pytest.raises(PlatformError, match=message) as info:
        discover(root)
    assert "thread_siblings_list" in str(info.value)


def test_cli_json_carries_effective_speed_policies_and_siblings(fake_sysfs, capsys):
    root = fake_sysfs("rk3588")
    write(root / f"{POLICY}4" / "scaling_max_freq", "1800000")
    assert cli.main(["platform", "--sysfs-root", str(root), "--json"]) == 0
    big = json.loads(capsys.readouterr().out)["clusters"][1]
    assert big["policies"] == list(policies(4, 6)) and big["effective_speed"] == 0.75
    assert big["smt_siblings"] == []
    assert cli.main(["platform", "--sysfs-root", str(fake_sysfs("intel-hybrid")), "--json"]) == 0
    pcore = json.loads(capsys.readouterr().out)["clusters"][1]
    assert pcore["cpus"] == [0, 2, 4, 6] and pcore["smt_siblings"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert cli.main(["platform", "--sysfs-root", str(fake_sysfs("intel-hybrid"))]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[-3:] == ["SPEED", "EFF", "THREADS"]
    assert lines[3].split()[0] == "p-core" and lines[3].split()[-1] == "0-7"


def test_clusters_of_one_core_type_run_at_their_clock_ratio(fake_sysfs):
    from tunerd.platform.clusters import core_type_speeds
    speeds = core_type_speeds(discover(fake_sysfs("sd855")))
    assert speeds == {"silver": 1.0, "gold": pytest.approx(2419200 / 2841600), "prime": 1.0}
    assert set(core_type_speeds(discover(fake_sysfs("rk3588"))).values()) == {1.0}
    emulated = resolve_platform("emulate:big=0@1.0,little=1@0.5", sysfs_root=fake_sysfs("emulate:big=0@1.0,little=1@0.5"),
                                available_cpus={0, 1})
    assert core_type_speeds(emulated) == {"little": 1.0, "big": 1.0}    # the speed is in their costs
    assert core_type_speeds(resolve_platform("board:sd855"))["gold"] == pytest.approx(2420 / 2840)
