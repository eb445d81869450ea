"""Prometheus metrics of a running daemon (``[metrics] listen``, ``--metrics ADDR``; off by default).

Two halves, so that a scrape can never stall a frame:

- The poll loop keeps plain numbers it has anyway (counters, and the served latencies in the fixed
  buckets of ``LatencyHistogram``: one bisect per frame, no lock) and, only when a scrape asks,
  copies them into a snapshot dict in its next tick (``SnapshotExchange``).
- The HTTP server of ``prometheus_client`` runs in threads of its own. A scrape waits for that
  snapshot at most ``SNAPSHOT_WAIT_S`` (a loop busy with a reconfiguration answers it a few ticks
  later; until then the previous snapshot serves, and its age is a metric), turns it into metric
  families (``families``) and reads the resident memory of the daemon and its workers itself.

``families`` is pure: the docs' table of metrics is generated from it (``metrics_table``), and a test
holds that table against what a live daemon serves, so the two cannot drift.
"""
from __future__ import annotations

import bisect
import os
import threading
import time
from typing import Callable, Iterable

from ..errors import ConfigError
from ..tuning import states
from ..wire import protocol

# NOTE: served latency is one to a few periods of the pipeline: 1-100 ms on the boards tunerd is for
LATENCY_BUCKETS_S = (0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
                     0.15, 0.25, 0.5, 1.0, 2.5)
SNAPSHOT_WAIT_S = 1.0
# the error codes a frame can be answered with, each a label of tunerd_frames_failed_total from the start
FRAME_ERROR_CODES = (*protocol.REQUEST_ERRORS, *protocol.RETRYABLE_ERRORS, *protocol.SERVER_ERRORS)
EXTRA_HINT = "pip install 'tunerd[metrics]'"
_PAGE = os.sysconf("SC_PAGE_SIZE")


class LatencyHistogram:
    """Counts per bucket of ``LATENCY_BUCKETS_S`` (the last one is +Inf) and the sum: what the poll
    loop records per served frame. Not thread-safe by design: only the loop writes it, and a
    snapshot copies it in the loop."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total_s = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, seconds)] += 1
        self.total_s += seconds

    def snapshot(self) -> dict:
        return {"bounds": list(self.bounds), "counts": list(self.counts), "sum_s": self.total_s}


class SnapshotExchange:
    """Hands the loop's numbers to scrape threads without making either wait on the other for long.

    A scrape raises ``wanted``; the loop sees it in its next tick (one attribute read a tick when
    nobody scrapes), calls ``publish`` with a fresh snapshot, and every waiting scrape takes it."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self._cond = threading.Condition()
        self._latest: dict | None = None
        self._published_at: float | None = None
        self._generation = 0
        self.wanted = False

    def publish(self, snapshot: dict) -> None:
        with self._cond:
            self._latest = snapshot
            self._published_at = self.clock()
            self._generation += 1
            self.wanted = False
            self._cond.notify_all()

    def request(self, timeout: float = SNAPSHOT_WAIT_S) -> tuple[dict | None, float | None]:
        """A snapshot newer than this call if the loop answers within ``timeout``, else the last one:
        (snapshot or None, its age in seconds or None)."""
        with self._cond:
            generation = self._generation
            self.wanted = True
            self._cond.wait_for(lambda: self._generation != generation, timeout)
            age = None if self._published_at is None else max(0.0, self.clock() - self._published_at)
            return self._latest, age


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``) -> (host, port); port 0 lets the OS choose."""
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"metrics listen address must be HOST:PORT, e.g. 127.0.0.1:9464, got {listen!r}")
    return host, int(port)


def _metric_types():
    try:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily,
                                            InfoMetricFamily, StateSetMetricFamily)
    except ImportError as err:
        raise ConfigError(f"metrics are on ([metrics] listen / --metrics) but prometheus_client is not "
                          f"installed: {EXTRA_HINT}") from err
    return CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily, StateSetMetricFamily


def _rss_bytes(pid: int) -> int | None:
    # NOTE: /proc/PID/statm is what psutil reads too; a worker may exit between snapshot and scrape
    try:
        with open(f"/proc/{pid}/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


def families(snap: dict, age_s: float | None = None, *, rss: Callable[[int], int | None] = _rss_bytes) -> list:
    """The metric families of one snapshot (``Daemon.metrics_snapshot``). Pure but for ``rss``."""
    Counter, Gauge, Histogram, Info, StateSet = _metric_types()
    out = []

    def gauge(name: str, doc: str, value, unit_scale: float = 1.0):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append(Gauge(name, doc, value=float(value) * unit_scale))

    out.append(Info("tunerd", "what this daemon runs: version, model, backend, platform source",
                    value={"version": str(snap.get("version")), "model": str(snap.get("model")),
                           "backend": str(snap.get("backend")), "platform": str(snap.get("platform_source"))}))
    out.append(Counter("tunerd_frames_served_total", "frames answered with a result",
                       value=snap.get("frames_served", 0)))
    failed = Counter("tunerd_frames_failed_total", "frames answered with an error, by error code "
                     "(docs/protocol.md)", labels=["code"])
    codes = dict.fromkeys(FRAME_ERROR_CODES, 0) | dict(snap.get("errors_by_code", {}))
    for code, n in sorted(codes.items()):
        failed.add_metric([code], n)
    out.append(failed)
    out.append(Counter("tunerd_busy_replies_total", "frames refused because the admission queue was full "
                       "(the busy error)", value=codes.get(protocol.BUSY, 0)))
    out.append(Counter("tunerd_replies_dropped_total", "replies dropped: the client was gone or did not read",
                       value=snap.get("replies_dropped", 0)))
    lat = snap.get("latency") or LatencyHistogram().snapshot()
    cumulative, buckets = 0, []
    for bound, n in zip([*lat["bounds"], float("inf")], lat["counts"]):
        cumulative += n
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    out.append(Histogram("tunerd_request_latency_seconds", "served frames: from receiving the request to "
                         "the reply being ready", buckets=buckets, sum_value=lat["sum_s"]))
    gauge("tunerd_fps", "frames per second the pipeline completed over its recent window", snap.get("fps"))
    gauge("tunerd_best_fps", "the tuner's best measured config's frames per second", snap.get("best_fps"))
    gauge("tunerd_gain_ratio", "the running config's measured fps over the best single-cluster config's",
          snap.get("gain_ratio"))
    out.append(StateSet("tunerd_tuner_state", "the tuner's state (docs/DESIGN.md)",
                        value={s: s == snap.get("state") for s in states.ALL}))
    out.append(Counter("tunerd_evaluations_total", "configs measured live", value=snap.get("evaluations", 0)))
    out.append(Counter("tunerd_retunes_total", "searches started again (frequency, thermal or drift events, "
                       "operator requests)", value=snap.get("retunes", 0)))
    gauge("tunerd_epoch", "the pipeline's epoch: one per config it has run", snap.get("epoch"))
    out.append(Counter("tunerd_worker_restarts_total", "stage workers started again after dying",
                       value=snap.get("restarts", 0)))
    for key, doc in (("compute", "computing (including the emulated stretch)"),
                     ("wait", "waiting for its input"), ("blocked", "waiting for room in its output ring")):
        g = Gauge(f"tunerd_stage_{key}_seconds", f"mean seconds per frame a stage spends {doc}, over the "
                  "recent window", labels=["stage", "config"])
        for st in snap.get("stages", []):
            if st.get(f"{key}_ms") is not None:
                g.add_metric([str(st["stage"]), str(st["config"])], st[f"{key}_ms"] / 1000.0)
        out.append(g)
    per_cluster = [("speed", "tunerd_cluster_speed_ratio", "effective speed now, relative to the board's "
                    "fastest core at full clock", 1.0),
                   ("cur_khz", "tunerd_cluster_frequency_hertz", "current clock frequency", 1000.0),
                   ("cap_khz", "tunerd_cluster_frequency_cap_hertz", "frequency cap (scaling_max_freq: "
                    "what DVFS and thermal throttling set)", 1000.0),
                   ("max_khz", "tunerd_cluster_max_frequency_hertz", "hardware maximum frequency", 1000.0)]
    for key, name, doc, scale in per_cluster:
        g = Gauge(name, f"per cluster: {doc}", labels=["cluster"])
        for c in snap.get("clusters", []):
            if isinstance(c.get(key), (int, float)):
                g.add_metric([c["name"]], float(c[key]) * scale)
        out.append(g)
    gauge("tunerd_queue_frames", "frames admitted and waiting for the pipeline", snap.get("queue"))
    gauge("tunerd_in_flight_frames", "frames inside the pipeline", snap.get("in_flight"))
    gauge("tunerd_queue_capacity_frames", "admission limit: queued plus in flight (queue_depth)",
          snap.get("queue_depth"))
    mem = Gauge("tunerd_resident_memory_bytes", "resident memory of the daemon and of each stage worker",
                labels=["process", "pid"])
    for kind, pids in (("daemon", [snap.get("pid")]), ("worker", snap.get("worker_pids", []))):
        for pid in pids:
            if isinstance(pid, int) and (value := rss(pid)) is not None:
                mem.add_metric([kind, str(pid)], value)
    out.append(mem)
    gauge("tunerd_uptime_seconds", "seconds since the daemon started", snap.get("uptime_s"))
    gauge("tunerd_metrics_snapshot_seconds", "poll-loop time the copy of this scrape's numbers took",
          snap.get("snapshot_s"))
    gauge("tunerd_metrics_snapshot_age_seconds", "age of the numbers in this scrape (the poll loop hands "
          "them over between frames)", age_s)
    return out


class DaemonCollector:
    """A prometheus_client collector over a ``SnapshotExchange``."""

    def __init__(self, exchange: SnapshotExchange):
        self.exchange = exchange

    def collect(self) -> Iterable:
        snap, age = self.exchange.request()
        if snap is None:
            return []
        return families(snap, age)


class MetricsServer:
    """``/metrics`` on ``listen`` (HOST:PORT) in threads of prometheus_client's own HTTP server."""

    def __init__(self, listen: str, exchange: SnapshotExchange):
        _metric_types()                      # the clear error before anything binds
        from prometheus_client import CollectorRegistry, start_http_server
        host, port = parse_listen(listen)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(DaemonCollector(exchange))
        try:
            self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as err:
            raise ConfigError(f"cannot serve metrics on {listen}: {err}") from err
        bound = self._server.server_address
        self.address = f"http://{'[' + host + ']' if ':' in host else host}:{bound[1]}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def metrics_table(snapshot: dict) -> str:
    """The docs' table (docs/metrics.md): every family ``families`` makes of ``snapshot``."""
    rows = ["| metric | type | labels | meaning |", "|---|---|---|---|"]
    for fam in families(snapshot, 0.0, rss=lambda pid: 1):
        labels = sorted({k for s in fam.samples for k in s.labels} - {"le"})
        name = fam.name + ("_total" if fam.type == "counter" else "_info" if fam.type == "info" else "")
        rows.append(f"| `{name}` | {fam.type} | {', '.join(labels) or '-'} | {fam.documentation} |")
    return "\n".join(rows)


def example_snapshot() -> dict:
    """A snapshot with every field set: what ``metrics_table`` documents (every family, every label)."""
    lat = LatencyHistogram()
    for ms in (4, 9, 12, 30):
        lat.observe(ms / 1000)
    return {"version": "0.1.0", "model": "squeezenet", "backend": "onnxruntime", "platform_source": "sysfs",
            "frames_served": 4, "errors_by_code": {protocol.BUSY: 1}, "replies_dropped": 0,
            "latency": lat.snapshot(), "fps": 120.0, "best_fps": 121.0, "gain_ratio": 1.3, "state": states.CONVERGED,
            "evaluations": 12, "retunes": 1, "epoch": 13, "restarts": 0,
            "stages": [{"stage": 0, "config": "0-4@little:4", "compute_ms": 7.5, "wait_ms": 0.4, "blocked_ms": 0.1}],
            "clusters": [{"name": "little", "speed": 0.5, "cur_khz": 1800000, "cap_khz": 1800000,
                          "max_khz": 1800000}],
            "queue": 0, "in_flight": 2, "queue_depth": 64, "pid": 1, "worker_pids": [2], "uptime_s": 60.0,
            "snapshot_s": 0.0004}
