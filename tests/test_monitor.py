"""The monitor turns lasting cpufreq, thermal and throughput changes into events."""
from __future__ import annotations

import pytest

from tunerd.platform.fakesysfs import set_emulated_freq
from tunerd.daemon.monitor import CPUFREQ, DRIFT, THERMAL, Monitor, MonitorConfig
from tunerd.platform.spec import resolve_platform


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def emulated(fake_sysfs):
    spec = "emulate:big=0@1.0,little=1@0.5"
    root = fake_sysfs(spec, max_khz=2_000_000)
    platform = resolve_platform(spec, sysfs_root=root, available_cpus={0, 1})
    clock = FakeClock()
    return Monitor(platform, root, MonitorConfig(debounce_s=2.0), clock=clock), root, clock


def test_no_events_when_nothing_changes(emulated):
    mon, _, clock = emulated
    for _ in range(5):
        clock.now += 1
        assert mon.sample() == []


def test_frequency_cap_change_is_debounced(emulated):
    mon, root, clock = emulated
    set_emulated_freq(root, 0, 1_200_000)
    assert mon.sample() == []            # seen, not yet lasting
    clock.now += 1.0
    assert mon.sample() == []
    clock.now += 1.5
    events = mon.sample()
    assert [(e.kind, e.source) for e in events] == [(CPUFREQ, "big")]
    assert "1200000" in events[0].detail
    assert mon.speed_factors()["big"] == pytest.approx(0.6)
    assert mon.freq_state() == "big=1200000,little=2000000"
    clock.now += 5
    assert mon.sample() == []            # reported once


def test_a_flicker_shorter_than_the_debounce_is_ignored(emulated):
    mon, root, clock = emulated
    set_emulated_freq(root, 0, 1_000_000)
    mon.sample()
    clock.now += 1
    set_emulated_freq(root, 0, 2_000_000)
    mon.sample()
    clock.now += 5
    assert mon.sample() == []


def test_thermal_trip_crossing(fake_sysfs):
    root = fake_sysfs("hikey970")
    platform = resolve_platform("auto", sysfs_root=root)
    clock = FakeClock()
    mon = Monitor(platform, root, MonitorConfig(debounce_s=1.0), clock=clock)
    zone = root / "class" / "thermal" / "thermal_zone0"
    trips = sorted(int((zone / f).read_text()) for f in ("trip_point_0_temp",) if (zone / f).exists())
    assert trips, "fixture board has a trip point"
    (zone / "temp").write_text(f"{trips[0] + 1000}\n")
    assert mon.sample() == []
    clock.now += 1.5
    events = mon.sample()
    assert [e.kind for e in events] == [THERMAL] and "above" in events[0].detail
    # cooling just below the trip is within the hysteresis: no event; well below: one event
    (zone / "temp").write_text(f"{trips[0] - 500}\n")
    clock.now += 5
    assert mon.sample() == [] and mon.sample() == []
    (zone / "temp").write_text(f"{trips[0] - 10000}\n")
    mon.sample()
    clock.now += 1.5
    assert "below" in mon.sample()[0].detail


def test_a_cluster_whose_first_cpu_is_offline_is_watched_through_its_policy(fake_sysfs):
    # hotplug keeps policy4 (named when CPU 4 came up) for the big cluster, now CPUs 5-7
    root = fake_sysfs("hikey970", online=[0, 1, 2, 3, 5, 6, 7])
    platform = resolve_platform("auto", sysfs_root=root)
    big = platform.cluster("big")
    assert big.cpus == (5, 6, 7) and big.policy.endswith("policy4")
    clock = FakeClock()
    mon = Monitor(platform, root, MonitorConfig(debounce_s=1.0), clock=clock)
    set_emulated_freq(root, 4, 1_000_000)
    mon.sample()
    clock.now += 1.5
    assert [(e.kind, e.source) for e in mon.sample()] == [(CPUFREQ, "big")]
    assert "big=1000000" in mon.freq_state()


def test_an_unreadable_temperature_is_no_change(fake_sysfs):
    root = fake_sysfs("hikey970")
    zone = root / "class" / "thermal" / "thermal_zone0"
    (zone / "temp").write_text("80000\n")         # above its trip points from the start
    platform = resolve_platform("auto", sysfs_root=root)
    clock = FakeClock()
    mon = Monitor(platform, root, MonitorConfig(debounce_s=1.0), clock=clock)
    (zone / "temp").unlink()                       # a sleeping sensor: no reading
    for _ in range(3):
        clock.now += 1.0
        assert mon.sample() == []
    (zone / "temp").write_text("80000\n")
    clock.now += 5.0
    assert mon.sample() == []                      # back at the level it had: still no event


def test_throughput_drift(emulated):
    mon, _, clock = emulated
    mon.set_converged(100.0)
    assert mon.sample(fps=95.0) == []
    mon.sample(fps=70.0)
    clock.now += 3
    assert mon.sample(fps=70.0) == []
    clock.now += 3
    events = mon.sample(fps=70.0)
    assert [e.kind for e in events] == [DRIFT]
    clock.now += 10
    assert mon.sample(fps=70.0) == []     # needs a new converged figure first


def test_missing_files_mean_nothing_to_watch(tmp_path):
    platform = resolve_platform("emulate:big=0@1.0", sysfs_root=tmp_path, available_cpus={0})
    mon = Monitor(platform, tmp_path, clock=FakeClock())
    assert mon.sample(fps=1.0) == []
    assert mon.speed_factors() == {"big": 1.0}
