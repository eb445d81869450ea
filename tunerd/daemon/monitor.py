"""The monitor: notices when the board's speed changes, so the tuner can retune.

It samples, per cluster, the cpufreq cap (``scaling_max_freq``) and current frequency
(``scaling_cur_freq``) of every policy the cluster follows (a cluster merged from several policies,
RK3588's A76 pairs or x86's per-core policies, changes when any of them does), the thermal zones'
temperatures against their trip points, and the served
throughput against the converged figure. Changes become **events** only once they have lasted
``debounce_s`` (a governor flickering between two frequencies, or one slow frame, is not a reason to
retune). Pure logic over an injectable clock and reader; missing files mean "nothing to watch".
See Documentation/admin-guide/pm/cpufreq.rst and Documentation/driver-api/thermal/sysfs-api.rst.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable

from ..platform.clusters import Cluster, Platform, effective_speed
from ..platform.discovery import read_thermal_zones
from ..platform.sysfs import THERMAL_DIR, SysfsReader, read_positive_int

CPUFREQ = "cpufreq"
THERMAL = "thermal"
DRIFT = "drift"


@dataclass(frozen=True)
class Event:
    kind: str          # cpufreq | thermal | drift
    source: str        # cluster or zone name, or "throughput"
    detail: str
    at: float

    def to_dict(self) -> dict:
        return {"kind": self.kind, "source": self.source, "detail": self.detail, "at": self.at}


@dataclass
class _Pending:
    """A candidate new value and since when it has held."""
    value: object
    since: float


@dataclass
class MonitorConfig:
    debounce_s: float = 2.0
    cur_change: float = 0.10        # relative change of the sustained current frequency
    thermal_hysteresis_mc: int = 2000
    drift_drop: float = 0.15        # sustained throughput below (1 - drift_drop) x converged
    drift_window_s: float = 5.0


@dataclass
class Monitor:
    platform: Platform
    sysfs_root: str | os.PathLike = "/sys"
    config: MonitorConfig = field(default_factory=MonitorConfig)
    clock: Callable[[], float] = time.monotonic

    def __post_init__(self):
        self._fs = SysfsReader(self.sysfs_root)
        self._freq = {c.name: self._read_freq(c) for c in self.platform.clusters}
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._zone_level = {z.name: self._level(z.temp_mc, z) for z in self._zones()}
        self._converged_fps: float | None = None
        self._low_since: float | None = None

    # ------------------------------------------------------------------ reads
    def _read_freq(self, cluster: Cluster) -> tuple[tuple, tuple]:
        """(current, cap) kHz of each followed policy, None where unreadable; () without cpufreq."""
        return (tuple(read_positive_int(p) for p in cluster.policy_paths(self.sysfs_root, "scaling_cur_freq")),
                tuple(read_positive_int(p) for p in cluster.policy_paths(self.sysfs_root, "scaling_max_freq")))

    def _zones(self):
        return read_thermal_zones(self._fs) if self._fs.exists(THERMAL_DIR) else ()

    @staticmethod
    def _level(temp_mc, zone) -> int:
        """How many trip points (passive/active/hot/critical) the temperature is at or above."""
        if temp_mc is None:
            return 0
        return sum(1 for t in zone.trips if temp_mc >= t.temp_mc)

    def frequencies(self) -> dict[str, dict]:
        """Per cluster the sustained (debounced) current and cap frequency in kHz (of several
        policies, the lowest)."""
        return {name: {"cur_khz": _lowest(cur), "max_khz": _lowest(cap)} for name, (cur, cap) in self._freq.items()}

    def speed_factors(self) -> dict[str, float]:
        """Per cluster the effective speed now (1.0 = full nominal speed), for retune scaling."""
        return {c.name: effective_speed(c, self.sysfs_root) for c in self.platform.clusters}

    def freq_state(self) -> str:
        """A stable key of the frequency caps, for persistence ("big=2000000,little=1000000"; a
        cluster of several policies has one cap per policy: "big=2400000/1200000")."""
        return ",".join(f"{n}={'/'.join(str(c or 0) for c in caps) or 0}"
                        for n, (_, caps) in sorted(self._freq.items()))

    # ------------------------------------------------------------------ throughput drift
    def set_converged(self, fps: float | None) -> None:
        self._converged_fps = fps
        self._low_since = None

    # ------------------------------------------------------------------ sampling
    def _debounced(self, key: tuple[str, str], value, current, now: float, changed: Callable) -> bool:
        """True once ``value`` has differed from ``current`` (per ``changed``) for debounce_s."""
        if not changed(value, current):
            self._pending.pop(key, None)
            return False
        pending = self._pending.get(key)
        if pending is None or changed(value, pending.value):
            self._pending[key] = _Pending(value, now)
            return self.config.debounce_s <= 0
        if now - pending.since >= self.config.debounce_s:
            del self._pending[key]
            return True
        return False

    def sample(self, fps: float | None = None) -> list[Event]:
        """Read everything once; return the events whose change has now lasted debounce_s."""
        now = self.clock()
        events: list[Event] = []
        rel = self.config.cur_change

        def cur_changed(a, b):
            return any(x is not None and y is not None and abs(x - y) > rel * y for x, y in zip(a, b))

        def cap_changed(a, b):
            return a != b

        for c in self.platform.clusters:
            cur, cap = self._read_freq(c)
            old_cur, old_cap = self._freq[c.name]
            if self._debounced((c.name, "cap"), cap, old_cap, now, cap_changed):
                events.append(Event(CPUFREQ, c.name, f"frequency cap {_khz(old_cap)} -> {_khz(cap)} kHz", now))
                self._freq[c.name] = (cur, cap)
                self._pending.pop((c.name, "cur"), None)
                continue
            if self._debounced((c.name, "cur"), cur, old_cur, now, cur_changed):
                events.append(Event(CPUFREQ, c.name, f"sustained frequency {_khz(old_cur)} -> {_khz(cur)} kHz", now))
                self._freq[c.name] = (cur, cap)
        for zone in self._zones():
            old = self._zone_level.get(zone.name, 0)
            if zone.temp_mc is None:
                # NOTE: a sensor that cannot be read now (EAGAIN/ENODATA while it sleeps) has not
                # changed: keep its level, drop what was pending
                self._pending.pop((zone.name, "trip"), None)
                continue
            level = self._level(zone.temp_mc, zone)
            if level < old:
                # cooling must pass the trip by the hysteresis before it counts
                trip = sorted(t.temp_mc for t in zone.trips)[old - 1]
                if zone.temp_mc > trip - self.config.thermal_hysteresis_mc:
                    level = old
            if self._debounced((zone.name, "trip"), level, old, now, lambda a, b: a != b):
                direction = "above" if level > old else "below"
                events.append(Event(THERMAL, zone.name, f"{zone.type} now {direction} trip point "
                                    f"({zone.temp_c:.1f} C, level {old} -> {level})", now))
                self._zone_level[zone.name] = level
        if fps is not None and self._converged_fps:
            if fps < (1 - self.config.drift_drop) * self._converged_fps:
                self._low_since = now if self._low_since is None else self._low_since
                if now - self._low_since >= self.config.drift_window_s:
                    events.append(Event(DRIFT, "throughput", f"{fps:.2f} fps is below the converged "
                                        f"{self._converged_fps:.2f} fps", now))
                    self.set_converged(None)
            else:
                self._low_since = None
        return events


def _lowest(values: tuple) -> int | None:
    known = [v for v in values if v is not None]
    return min(known) if known else None


def _khz(values: tuple) -> str:
    """One policy's value as before ("2000000", "None"); several as "2400000/1200000"."""
    return "/".join(str(v) for v in values) if values else "None"
