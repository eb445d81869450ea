"""Reliability of a real daemon under faults and load (short forms; the long runs are tools/soak.py
and tools/torture_reconfig.py, figures in docs/RELIABILITY.md).

Stage workers killed with SIGKILL while serving, clients that vanish mid-request or never read,
many clients at saturation (nothing leaks), hundreds of reconfigurations under load (no frame
lost, duplicated, reordered or changed), SIGKILL of a process writing state and of the daemon itself
(the restart clears its stale ipc sockets and finds the last good state).

One daemon (tools/harness.py: `tunerd serve` on the emulated big.LITTLE of CPUs 0-1, ipc sockets in
a temp dir) serves the module's tests in order; the last test kills and restarts it.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from harness import MODEL, SIZE, DaemonProcess, crash_state_writes, gone, wait_for  # noqa: E402
from soak import Books, client_loop, soak  # noqa: E402
from torture_reconfig import torture_daemon, torture_pipeline  # noqa: E402

import tunerd  # noqa: E402
from tunerd.wire import protocol  # noqa: E402
from tunerd.wire.client import Client  # noqa: E402
from tunerd.daemon.server import REPLY_STALL_S  # noqa: E402

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0),
                                reason="needs CPUs 0 and 1")
PIN = "0-8@big:1 | 9-17@little:1"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="module")
def daemon(workdir):
    d = DaemonProcess(workdir, name="rel")
    yield d
    if d.alive():
        assert d.stop() == 0


@pytest.fixture(scope="module")
def refs():
    model = tunerd.load_model(MODEL, input_size=SIZE, backend="numpy")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(model.input_shape).astype(np.float32) for _ in range(4)]
    return inputs, [model.run(x) for x in inputs]


class Load:
    """``n`` client threads (tools/soak.py's) keeping frames in flight, each reply matched by id."""

    def __init__(self, address: str, refs, n: int = 2, in_flight: int = 4):
        self.books, self.stop_event, self.failures = Books(), threading.Event(), []
        inputs, outputs = refs
        self.threads = [threading.Thread(target=client_loop, args=(address, inputs, outputs, in_flight,
                                                                   self.stop_event, self.books, k, self.failures),
                                         daemon=True) for k in range(n)]
        for t in self.threads:
            t.start()

    def wait_ok(self, more: int, timeout: float = 60) -> None:
        target = self.books.ok + more
        deadline = time.monotonic() + timeout
        while self.books.ok < target:
            assert time.monotonic() < deadline, f"{self.books.ok}/{target} frames after {timeout} s"
            assert not self.failures, self.failures
            time.sleep(0.05)

    def stop(self) -> Books:
        self.stop_event.set()
        for t in self.threads:
            t.join(90)
        assert not self.failures, self.failures
        return self.books


def assert_all_answered_ok(books: Books) -> None:
    assert books.sent > 0
    assert books.unexpected == 0 and books.bad_output == 0
    assert books.errors == {} and books.ok == books.sent    # each request exactly one reply, ok


# --------------------------------------------------------------------------- faults
def test_stage_workers_killed_while_serving_lose_no_request(daemon, refs):
    restarts0 = daemon.status()["restarts"]
    load = Load(daemon.frames, refs)
    killed = []
    try:
        load.wait_ok(20)
        for _ in range(3):
            victim = daemon.worker_pids()[len(killed) % 2 - 1]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            wait_for(lambda: daemon.status()["restarts"] >= restarts0 + len(killed), 20, "the pipeline restart")
            load.wait_ok(20)                  # the restarted pipeline serves (and the re-runs are done)
    finally:
        books = load.stop()
    assert_all_answered_ok(books)
    assert gone(killed)
    status = daemon.status()
    assert status["restarts"] == restarts0 + len(killed)
    assert status["queue"] == 0 and status["in_flight"] == 0


def test_clients_vanishing_mid_request_do_not_hurt_others(daemon, refs):
    dropped0 = daemon.status()["replies_dropped"]
    load = Load(daemon.frames, refs, n=1)
    x = refs[0][0]
    try:
        for _ in range(20):
            s = zmq.Context.instance().socket(zmq.DEALER)
            s.linger = 0
            s.connect(daemon.frames)
            for id in range(1, 3):           # 40 in all: below the admission queue's 64
                s.send_multipart(protocol.encode_request(id, x), copy=False)
            # NOTE: linger so the requests really leave (a zero-linger close can discard them unsent,
            # and then there is nothing to drop); the socket is still gone long before its replies
            s.close(linger=1000)
        load.wait_ok(20)
    finally:
        books = load.stop()
    assert_all_answered_ok(books)
    status = wait_for(lambda: (s := daemon.status())["in_flight"] == 0 and s, 30, "the frames of the vanished")
    # their frames are done and nothing of theirs is held (whether zmq reports each reply to a vanished
    # peer as unroutable, counted in replies_dropped, or discards it with the closed pipe is zmq's timing)
    assert status["queue"] == 0 and status["in_flight"] == 0
    assert status["replies_dropped"] >= dropped0
    assert daemon.alive()


def test_a_client_that_never_reads_is_cut_off_not_waited_for(daemon, refs):
    """SNDHWM bounds what the server buffers per client; beyond it, replies to that client are dropped."""
    slow = zmq.Context.instance().socket(zmq.DEALER)
    slow.linger = 0
    slow.rcvhwm = 1
    slow.setsockopt(zmq.RCVBUF, 4096)
    slow.connect(daemon.frames)
    dropped0 = daemon.status()["replies_dropped"]
    load = Load(daemon.frames, refs, n=2)
    sent = 0
    try:
        load.wait_ok(10)
        t0 = time.monotonic()
        for i in range(6000):                   # cheap requests (bad_frames), answered at once
            slow.send(msgpack.packb({"id": i}))
            sent += 1
        for i in range(20):                     # and frames to compute
            slow.send_multipart(protocol.encode_request(10_000 + i, refs[0][0]), copy=False)
            sent += 1
        wait_for(lambda: daemon.status()["replies_dropped"] - dropped0 > 1000, 60, "replies dropped")
        load.wait_ok(20)
        served_while_flooded = time.monotonic() - t0
    finally:
        books = load.stop()
    assert_all_answered_ok(books)
    assert served_while_flooded < 60
    wait_for(lambda: (s := daemon.status())["in_flight"] == 0 and s["queue"] == 0, 30, "a drain")
    time.sleep(REPLY_STALL_S + 1)               # what the server still held for it is dropped by now
    dropped = daemon.status()["replies_dropped"] - dropped0
    readable = readable_bytes = 0
    while slow.poll(500):
        readable_bytes += sum(len(f) for f in slow.recv_multipart())
        readable += 1
    slow.close(0)
    # every reply was either buffered for it or dropped; what was buffered is bounded (SNDHWM 256
    # replies in the server's pipe, then the socket buffers: a few hundred KiB whatever it sends)
    assert readable + dropped == sent, (readable, dropped, sent)
    assert dropped > 0 and readable_bytes < 2**20, (readable, readable_bytes)


def test_state_write_killed_midway_leaves_the_last_good_record(workdir):
    report = crash_state_writes(workdir / "crash-state", 15, pad_bytes=256 * 1024)
    assert report["ok"], report["problems"]
    assert report["good_reads"] == 15


# --------------------------------------------------------------------------- load
def test_sixteen_clients_at_saturation_nothing_leaks(daemon):
    daemon.call("pin", config=PIN)
    try:
        report = soak(daemon.frames, daemon.control, daemon.pid, clients=16, in_flight=4, duration=12, interval=3,
                      warmup=3, min_hold=0.4, log=lambda msg: None)
    finally:
        daemon.call("unpin")
    assert report["lost"] == 0 and report["unexpected_replies"] == 0 and report["bad_outputs"] == 0
    assert report["replies_error"] == {}
    assert report["max_admitted"] <= report["queue_depth"]
    # NOTE: a few descriptors of the 16 just-closed client connections can still be open in ZeroMQ's
    # I/O thread when sampled; a leak grows with the requests served (here thousands), not by a handful
    assert report["footprint"]["end"]["fds"] <= report["footprint"]["after_warmup"]["fds"] + 8, report
    assert report["footprint"]["end"]["dev_shm"] == 0
    assert report["ok"], report["failures"]


# --------------------------------------------------------------------------- reconfiguration torture
def test_a_hundred_reconfigurations_under_load_keep_every_frame(workdir):
    report = torture_pipeline(100, seed=3, workdir=workdir, log=lambda msg: None)
    assert report["reconfigs"] == 100 and report["distinct_configs"] > 5
    assert report["lost"] == report["duplicated"] == report["failed"] == 0
    assert report["wrong_epoch"] == report["outputs_differ"] == report["restarts"] == 0
    assert report["ok"], report["failures"]


def test_pins_through_the_control_socket_under_load_keep_every_frame_in_order(daemon):
    report = torture_daemon(30, seed=4, daemon=daemon, log=lambda msg: None)
    assert report["ok"], report
    assert report["epochs_advanced"] >= 10 and report["lost"] == 0


# --------------------------------------------------------------------------- the daemon itself killed
def test_daemon_killed_leaves_stale_sockets_that_do_not_stop_a_restart(daemon, refs):
    load = Load(daemon.frames, refs, n=1)
    load.wait_ok(5)
    workers = daemon.kill()
    load.stop_event.set()                      # its frames in flight die with the daemon
    for address in (daemon.frames, daemon.control):
        assert Path(address[len("ipc://"):]).exists()     # stale: nobody removed them
    assert gone(workers, 15)                   # the workers noticed their parent go
    daemon.start()
    with Client(daemon.frames, timeout=30) as c:
        inputs, outputs = refs
        np.testing.assert_allclose(c.infer(inputs[1]), outputs[1], rtol=0, atol=1e-6)
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("tunerd")]
