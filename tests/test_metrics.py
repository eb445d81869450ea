"""Prometheus metrics: the pure half (histogram, snapshot hand-over, families, config), the docs'
table, and a live daemon scraped over HTTP and parsed with prometheus_client's own parser."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from tunerd.daemon import metrics
from tunerd.daemon.config import DaemonConfig, load_config, validate
from tunerd.errors import ConfigError
from tunerd.wire import protocol
from tunerd.wire.client import Client, RemoteError

parser = pytest.importorskip("prometheus_client.parser")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from harness import BIN, MODEL, SIZE, DaemonProcess, wait_for  # noqa: E402
import metrics_table  # noqa: E402


def parse(text: str) -> dict:
    return {fam.name: fam for fam in parser.text_string_to_metric_families(text)}


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    for s in fams[family].samples:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError(f"{sample or family} {labels}")


def render(snapshot: dict, age=0.0) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    class One:
        def collect(self):
            return metrics.families(snapshot, age, rss=lambda pid: 1000 * pid)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(One())
    return generate_latest(registry).decode()


def test_latency_buckets_count_each_frame_once_at_or_below_their_bound():
    h = metrics.LatencyHistogram((0.01, 0.1))
    for s in (0.005, 0.01, 0.05, 0.5):
        h.observe(s)
    snap = h.snapshot()
    assert snap["counts"] == [2, 1, 1] and snap["sum_s"] == pytest.approx(0.565)
    fams = parse(render({**metrics.example_snapshot(), "latency": snap}))
    name = "tunerd_request_latency_seconds"
    assert value(fams, name, f"{name}_bucket", le="0.01") == 2
    assert value(fams, name, f"{name}_bucket", le="0.1") == 3
    assert value(fams, name, f"{name}_bucket", le="+Inf") == value(fams, name, f"{name}_count") == 4


def test_a_scrape_takes_the_loops_next_snapshot_and_a_stalled_loop_answers_with_the_last_one():
    clock = [100.0]
    ex = metrics.SnapshotExchange(clock=lambda: clock[0])
    assert ex.request(timeout=0.01) == (None, None)     # nothing published yet: no numbers, no wait past it
    stop = threading.Event()

    def loop():                       # what Daemon._housekeeping does each tick
        n = 0
        while not stop.is_set():
            if ex.wanted:
                n += 1
                ex.publish({"n": n})
            time.sleep(0.001)
    t = threading.Thread(target=loop, daemon=True)
    t.start()
    first, _ = ex.request(timeout=5)
    second, age = ex.request(timeout=5)
    stop.set()
    t.join(5)
    assert second["n"] > first["n"] and age == 0.0      # each scrape gets a fresh copy
    clock[0] += 7.5
    stale, age = ex.request(timeout=0.01)                # the loop is gone: no hang, the last copy and its age
    assert stale == second and age == pytest.approx(7.5)


def test_families_cover_every_code_state_stage_cluster_and_process():
    snap = metrics.example_snapshot()
    fams = parse(render(snap, age=0.25))
    assert value(fams, "tunerd_frames_served", "tunerd_frames_served_total") == 4
    for code in metrics.FRAME_ERROR_CODES:       # every code present from the start (rate() needs it)
        expected = 1 if code == protocol.BUSY else 0
        assert value(fams, "tunerd_frames_failed", "tunerd_frames_failed_total", code=code) == expected
    states = {s.labels["tunerd_tuner_state"]: s.value for s in fams["tunerd_tuner_state"].samples}
    assert states.pop("converged") == 1 and set(states.values()) == {0}
    assert value(fams, "tunerd_stage_compute_seconds", stage="0", config="0-4@little:4") == pytest.approx(0.0075)
    assert value(fams, "tunerd_cluster_frequency_cap_hertz", cluster="little") == 1.8e9
    assert value(fams, "tunerd_resident_memory_bytes", process="worker", pid="2") == 2000
    assert value(fams, "tunerd_metrics_snapshot_age_seconds") == 0.25
    assert value(fams, "tunerd_info", backend="onnxruntime") == 1
    # a figure not known yet (no fps before frames) is absent, not a made-up zero
    fams = parse(render({**snap, "fps": None, "best_fps": None}))
    assert "tunerd_fps" not in fams and "tunerd_best_fps" not in fams


def test_the_docs_table_is_the_generated_one():
    text = metrics_table.DOC.read_text()
    assert metrics.metrics_table(metrics.example_snapshot()) in text, \
        "docs/metrics.md is out of date: run tools/metrics_table.py --write"
    assert metrics_table.replace_table(text, metrics.metrics_table(metrics.example_snapshot())) == text


def test_metrics_addresses_are_checked_like_the_sockets(tmp_path):
    for ok in ("127.0.0.1:9464", "localhost:0", "[::1]:9464"):
        validate(DaemonConfig(metrics_listen=ok))
    for bad in ("9464", "127.0.0.1", "127.0.0.1:http", "127.0.0.1:70000", ":9464"):
        with pytest.raises(ConfigError, match="HOST:PORT"):
            validate(DaemonConfig(metrics_listen=bad))
    with pytest.raises(ConfigError, match="allow_remote"):
        validate(DaemonConfig(metrics_listen="0.0.0.0:9464"))
    validate(DaemonConfig(metrics_listen="0.0.0.0:9464", allow_remote=True))
    path = tmp_path / "t.toml"
    path.write_text('[metrics]\nlisten = "127.0.0.1:9464"\n')
    assert load_config(str(path), required=True).metrics_listen == "127.0.0.1:9464"
    path.write_text('[metrics]\nlisten = ""\n')
    assert load_config(str(path), required=True).metrics_listen is None
    path.write_text('[metrics]\nlisten = 9464\n')
    with pytest.raises(ConfigError, match="'listen' must be str"):
        load_config(str(path), required=True)


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    monkeypatch.setitem(sys.modules, "prometheus_client.core", None)
    with pytest.raises(ConfigError, match=r"tunerd\[metrics\]"):
        metrics.MetricsServer("127.0.0.1:0", metrics.SnapshotExchange())


def test_a_remote_metrics_address_stops_serve_with_one_line(tmp_path):
    out = subprocess.run([str(BIN / "tunerd"), "serve", "--model", MODEL, "--metrics", "0.0.0.0:9464",
                          "--state-dir", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.strip().count("\n") == 0 and "allow_remote" in out.stderr, out.stderr


@pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")
def test_a_live_daemon_is_scraped_and_its_numbers_add_up(tmp_path):
    with DaemonProcess(tmp_path, extra=("--metrics", "127.0.0.1:0")) as d:
        url = d.status()["metrics"]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32)
        with Client(d.frames, timeout=60) as c:
            for _ in range(6):
                c.infer(x)
            with pytest.raises(RemoteError) as err:
                c.infer(np.zeros((1, 3, SIZE + 1, SIZE), np.float32))
            assert err.value.code == protocol.BAD_SHAPE
        # the counters are the daemon's own books (its status), scraped while it serves
        status = d.status()
        with urllib.request.urlopen(url, timeout=10) as reply:
            assert reply.status == 200 and reply.headers["Content-Type"].startswith("text/plain")
            fams = parse(reply.read().decode())
        assert value(fams, "tunerd_frames_served", "tunerd_frames_served_total") == status["frames_served"] == 6
        assert value(fams, "tunerd_frames_failed", "tunerd_frames_failed_total", code="bad_shape") == 1
        lat = "tunerd_request_latency_seconds"
        assert value(fams, lat, f"{lat}_count") == 6 and value(fams, lat, f"{lat}_sum") > 0
        states = {s.labels["tunerd_tuner_state"]: s.value for s in fams["tunerd_tuner_state"].samples}
        assert sum(states.values()) == 1 and states[status["state"]] == 1
        assert value(fams, "tunerd_epoch") == status["epoch"]
        assert value(fams, "tunerd_info", backend="numpy", model=status["model"]["name"]) == 1
        workers = {s.labels["pid"] for s in fams["tunerd_resident_memory_bytes"].samples
                   if s.labels["process"] == "worker"}
        assert workers == {str(p) for p in d.worker_pids()} and workers
        assert value(fams, "tunerd_resident_memory_bytes", process="daemon", pid=str(d.pid)) > 10 * 2**20
        clusters = {s.labels["cluster"] for s in fams["tunerd_cluster_speed_ratio"].samples}
        assert clusters == {c["name"] for c in status["platform"]["clusters"]}
        assert fams["tunerd_stage_compute_seconds"].samples          # the stages have run frames
        assert 0 < value(fams, "tunerd_metrics_snapshot_seconds") < 5
        # every metric of the docs' table is served, and nothing the table lacks
        # (the text format has no info type: tunerd_info is a gauge named with its suffix there)
        documented = {fam.name + ("_info" if fam.type == "info" else "")
                      for fam in metrics.families(metrics.example_snapshot(), 0.0)}
        assert set(fams) <= documented
        # absent until measured (before the first evaluation ends there is no best and no gain)
        assert documented - set(fams) <= {"tunerd_fps", "tunerd_best_fps", "tunerd_gain_ratio"}
        assert d.stop() == 0
