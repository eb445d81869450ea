"""tunerd.wire.client against the fake daemon: infer, pipelining, id matching, errors, timeouts, CURVE."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
import zmq
import zmq.auth

import fake_daemon
from fake_daemon import FakeDaemon
from tunerd.wire import protocol
from tunerd.wire.client import (Client, ClientError, ClientTimeout, ControlClient, DaemonNotRunning, RemoteError,
                           VersionMismatch, load_curve_keypair)
from tunerd.errors import TunerdError

SHAPE = (1, 3, 8, 8)


def frame(value: float = 1.0) -> np.ndarray:
    return np.full(SHAPE, value, np.float32)


@pytest.fixture
def daemon():
    with FakeDaemon() as d:
        yield d


def test_infer_returns_the_daemons_output(daemon):
    with Client(daemon.frames_address, timeout=5) as client:
        y = client.infer(frame(1.5))
        assert y.shape == SHAPE and y.dtype == np.float32 and np.all(y == 3.0)
        # float64 frames are sent as float32 (the models' dtype), ints too
        assert np.all(client.infer(np.ones(SHAPE)) == 2.0)
        assert client.in_flight == 0


def test_large_frames_round_trip_without_corruption():
    x = np.random.default_rng(0).standard_normal((1, 3, 512, 512)).astype(np.float32)   # 3 MiB
    with FakeDaemon(input_shape=None, hold=2) as d, Client(d.frames_address, timeout=10) as client:
        a, b = client.submit(x), client.submit(x + 1)
        np.testing.assert_array_equal(client.result(b), (x + 1) * 2)
        np.testing.assert_array_equal(client.result(a), x * 2)


def test_infer_over_ipc(tmp_path):
    with FakeDaemon(frames=f"ipc://{tmp_path}/frames.sock", control=f"ipc://{tmp_path}/control.sock") as d:
        with Client(d.frames_address, timeout=5) as client:
            assert float(client.infer(frame(2)).ravel()[0]) == 4.0


def test_results_come_in_completion_order_and_match_ids():
    with FakeDaemon(hold=4) as d, Client(d.frames_address, timeout=5) as client:
        ids = [client.submit(frame(i)) for i in range(4)]
        assert client.in_flight == 4
        got = list(client.results())
        assert [id for id, _ in got] == ids[::-1]        # the fake answers in reverse
        for id, y in got:
            assert np.all(y == 2 * ids.index(id))
        assert client.in_flight == 0 and list(client.results()) == []


def test_results_ordered_and_result_by_id():
    with FakeDaemon(hold=3) as d, Client(d.frames_address, timeout=5) as client:
        ids = [client.submit(frame(i)) for i in range(6)]
        assert [id for id, _ in client.results(ordered=True)] == ids
        a, b, c = (client.submit(frame(i)) for i in (10, 20, 30))
        assert float(client.result(b).ravel()[0]) == 40.0
        assert float(client.result(a).ravel()[0]) == 20.0
        assert float(client.result(c).ravel()[0]) == 60.0
        with pytest.raises(KeyError):
            client.result(a)


def test_submit_keeps_at_most_max_in_flight():
    with FakeDaemon(hold=2) as d, Client(d.frames_address, timeout=5, max_in_flight=2) as client:
        ids = []
        for i in range(8):   # the fake answers in pairs
            ids.append(client.submit(frame(i)))
            assert client.in_flight <= 2
        assert sorted(id for id, _ in client.results()) == ids
    with FakeDaemon(hold=10) as d, Client(d.frames_address, timeout=0.2, max_in_flight=2) as client:
        client.submit(frame())
        client.submit(frame())
        with pytest.raises(ClientTimeout, match="2 frames in flight"):
            client.submit(frame())


def test_error_replies_raise_remote_error_with_code_and_id():
    with FakeDaemon(error_for=lambda id, x: protocol.BUSY if id % 2 == 0 else None) as d, \
            Client(d.frames_address, timeout=5) as client:
        assert client.infer(frame()) is not None           # id 1
        with pytest.raises(RemoteError) as info:
            client.infer(frame())                           # id 2
        assert (info.value.code, info.value.kind, info.value.id) == ("busy", "retry", 2)
        assert isinstance(info.value, TunerdError)
        ids = [client.submit(frame()) for _ in range(4)]    # 3, 4, 5, 6
        ok, failed = [], []
        while len(ok) + len(failed) < 4:
            try:
                for id, _ in client.results():
                    ok.append(id)
            except RemoteError as err:     # iterating again goes on with the rest
                failed.append(err.id)
        assert sorted(ok) == [3, 5] and sorted(failed) == [4, 6] and sorted(ok + failed) == ids


def test_replies_and_collect_include_errors(daemon):
    with Client(daemon.frames_address, timeout=5) as client:
        client.submit(frame())
        client.submit(np.zeros((2, 2), np.float32))       # wrong shape
        replies = sorted(client.replies(), key=lambda r: r.id)
        assert replies[0].ok and replies[0].epoch == 7 and replies[0].latency_us >= 0
        assert (replies[1].ok, replies[1].error_code) == (False, "bad_shape")
        assert client.collect(0.0) == []
        client.submit(frame())
        got = []
        deadline = time.monotonic() + 5
        while not got and time.monotonic() < deadline:
            got = client.collect(0.5)
        assert len(got) == 1 and got[0].ok


def test_bad_requests_are_answered_not_dropped(daemon):
    with Client(daemon.frames_address, timeout=5, dtype=None) as client:
        with pytest.raises(RemoteError, match="bad_dtype"):
            client.infer(np.ones(SHAPE, np.float64))
        with pytest.raises(RemoteError, match="bad_shape"):
            client.infer(np.ones((1, 3, 8, 9), np.float32))


def test_timeout_when_no_reply_and_late_replies_are_dropped():
    with FakeDaemon(answer_frames=False) as d, Client(d.frames_address, timeout=0.1) as client:
        start = time.monotonic()
        with pytest.raises(ClientTimeout) as info:
            client.infer(frame())
        assert isinstance(info.value, TimeoutError) and time.monotonic() - start < 2
        assert client.in_flight == 0
    # hold=2: the first frame's reply comes only with the second's; the client must not mix them up
    with FakeDaemon(hold=2) as d, Client(d.frames_address, timeout=5) as client:
        with pytest.raises(ClientTimeout):
            client.infer(frame(1), timeout=0.1)
        assert float(client.infer(frame(5)).ravel()[0]) == 10.0
        assert client.in_flight == 0


def test_results_timeout_keeps_frames_in_flight():
    with FakeDaemon(hold=3) as d, Client(d.frames_address, timeout=5) as client:
        client.submit(frame())
        with pytest.raises(ClientTimeout):
            list(client.results(timeout=0.1))
        assert client.in_flight == 1 and client.abandon() == 1 and client.in_flight == 0


def test_close_is_idempotent(daemon):
    client = Client(daemon.frames_address)
    client.close()
    client.close()
    with pytest.raises(ValueError):
        Client(daemon.frames_address, max_in_flight=0)


def test_curve(tmp_path):
    server_public, server_secret = zmq.curve_keypair()
    with FakeDaemon(curve_secret_key=server_secret) as d:
        with Client(d.frames_address, timeout=5, curve_server_key=server_public) as client:
            assert float(client.infer(frame(1)).ravel()[0]) == 2.0
        # keys from certificate files, as tunerctl and loadgen take them
        zmq.auth.create_certificates(str(tmp_path), "client")
        keypair = load_curve_keypair(tmp_path / "client.key_secret")
        with Client(d.frames_address, timeout=5, curve_server_key=server_public.decode(),
                    curve_keypair=keypair) as client:
            assert client.infer(frame()).shape == SHAPE
        wrong_public, _ = zmq.curve_keypair()
        with Client(d.frames_address, timeout=0.3, curve_server_key=wrong_public) as client:
            with pytest.raises(ClientTimeout):
                client.infer(frame())
        with pytest.raises(ClientError, match="no secret key"):
            load_curve_keypair(tmp_path / "client.key")


# --- control ----------------------------------------------------------------------------------------
def test_control_client_calls(daemon):
    with ControlClient(daemon.control_address, 5) as ctl:
        status = ctl.call("status")
        assert status["state"] == "tuning" and "ok" not in status and "id" not in status
        assert ctl.daemon["protocol"] == protocol.PROTOCOL_VERSION
        assert ctl.call("pin", config="0-17@big:1")["state"] == "pinned"
        with pytest.raises(RemoteError) as info:
            ctl.call("pin", config="nonsense")
        assert info.value.code == "bad_config"
        with pytest.raises(RemoteError, match="unknown_command"):
            ctl.call("reboot")
    assert daemon.commands[0] == "hello" and daemon.commands.count("hello") == 1


@pytest.mark.parametrize("where", ["missing ipc", "refused tcp", "stale ipc file"])
def test_control_client_nobody_answering_is_daemon_not_running(tmp_path, where):
    if where == "missing ipc":
        address = f"ipc://{tmp_path}/control.sock"
    elif where == "stale ipc file":
        (tmp_path / "control.sock").write_text("")
        address = f"ipc://{tmp_path}/control.sock"
    else:
        with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as probe:   # a port nobody listens on
            port = probe.bind_to_random_port("tcp://127.0.0.1")
            probe.unbind(f"tcp://127.0.0.1:{port}")
        address = f"tcp://127.0.0.1:{port}"
    start = time.monotonic()
    with pytest.raises(DaemonNotRunning, match="tunerd is not running") as info:
        with ControlClient(address, timeout=3) as ctl:
            ctl.call("status")
    assert address in str(info.value)
    assert time.monotonic() - start < 2.5, "refused connections are recognised, not waited out"


def test_control_client_silent_peer_times_out():
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as silent:
        silent.linger = 0
        port = silent.bind_to_random_port("tcp://127.0.0.1")
        with pytest.raises(DaemonNotRunning, match="no reply"):
            with ControlClient(f"tcp://127.0.0.1:{port}", timeout=0.3) as ctl:
                ctl.call("status")


def test_control_client_version_mismatch():
    with FakeDaemon(protocol_version=2) as d, ControlClient(d.control_address, 5) as ctl:
        with pytest.raises(VersionMismatch, match="speaks 2"):
            ctl.call("status")
    assert d.commands == ["hello"]


# --- tools/loadgen.py (a client program) ------------------------------------------------------------
def _loadgen():
    import importlib.util
    import pathlib
    import sys

    if "loadgen" not in sys.modules:    # tools/ is not a package; dataclasses need the module registered
        path = pathlib.Path(__file__).parents[1] / "tools" / "loadgen.py"
        spec = importlib.util.spec_from_file_location("loadgen", path)
        sys.modules["loadgen"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["loadgen"]


def test_loadgen_closed_loop_with_shape_from_status(capsys):
    loadgen = _loadgen()
    with FakeDaemon(error_for=lambda id, x: protocol.BUSY if id % 5 == 0 else None) as d:
        argv = ["--frames", d.frames_address, "--control", d.control_address, "-c", "2", "-k", "3", "-n", "50", "--json"]
        assert loadgen.main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shape"] == [1, 3, 8, 8] and report["frames_sent"] == 50
    assert report["frames_ok"] + report["errors"].get("busy", 0) == 50 and report["errors"]["busy"] >= 8
    assert report["fps"] > 0 and report["latency_ms"]["p50"] <= report["latency_ms"]["p99"]


def test_loadgen_fixed_rate_for_a_duration_and_timeouts(capsys):
    loadgen = _loadgen()
    with FakeDaemon() as d:
        assert loadgen.main(["--frames", d.frames_address, "--shape", "1,3,8,8", "--rate", "200", "-d", "0.3"]) == 0
        out = capsys.readouterr().out
        sent = int(out.split("/")[1].split()[0])
        assert 30 <= sent <= 70 and "fps" in out and "p99" in out
    with FakeDaemon(answer_frames=False) as d:
        argv = ["--frames", d.frames_address, "--shape", "1x3x8x8", "-n", "3", "--timeout", "0.2", "--json"]
        assert loadgen.main(argv) == 1
        assert json.loads(capsys.readouterr().out)["errors"] == {"timeout": 3}


def test_loadgen_colocate_follows_the_daemons_host_cpus(capsys):
    import os

    from tunerd.pipeline.worker import pin_all_threads
    loadgen = _loadgen()
    before = os.sched_getaffinity(0)
    cpu = max(before)
    status = {**fake_daemon.STATUS, "host_cpus": [cpu]}
    try:
        with FakeDaemon(status=status) as d:
            argv = ["--frames", d.frames_address, "--control", d.control_address, "-n", "20", "--colocate", "--json"]
            assert loadgen.main(argv) == 0
            assert os.sched_getaffinity(0) == {cpu}       # every thread of the process moved
    finally:
        pin_all_threads(before)
    report = json.loads(capsys.readouterr().out)
    assert report["frames_ok"] == 20 and report["colocated_cpus"] == [[cpu]]
    with pytest.raises(SystemExit) as exc:
        loadgen.main(["--shape", "1,3,8,8", "--colocate"])
    assert exc.value.code == 2 and "--colocate needs --control" in capsys.readouterr().err


class BusyServer:
    """A ROUTER that answers each frame id ``busy`` (with a retry hint) ``times`` times, then its result."""

    def __init__(self, times: int, retry_after_ms: int | None = 5):
        import threading
        self.times, self.retry_after_ms = times, retry_after_ms
        self.seen: dict[int, int] = {}
        self._ctx = zmq.Context.instance()
        self._sock = self._ctx.socket(zmq.ROUTER)
        port = self._sock.bind_to_random_port("tcp://127.0.0.1")
        self.address = f"tcp://127.0.0.1:{port}"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            if not self._sock.poll(20):
                continue
            identity, *msg = self._sock.recv_multipart()
            id, array = protocol.decode_request(msg)
            n = self.seen[identity, id] = self.seen.get((identity, id), 0) + 1
            if n <= self.times:
                reply = protocol.encode_reply_error(id, protocol.BUSY, "full", retry_after_ms=self.retry_after_ms)
            else:
                reply = protocol.encode_reply_ok(id, array * 2, 1, 10)
            self._sock.send_multipart([identity, *reply])

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self._sock.close(linger=0)


def test_busy_replies_are_retried_after_their_hint_then_given_up():
    server = BusyServer(times=2, retry_after_ms=5)
    try:
        with Client(server.address, timeout=5) as c:
            assert np.all(c.infer(frame(2.0)) == 4.0)           # two busy replies, then the result
            assert c.retried == 2 and list(server.seen.values()) == [3]
            ids = [c.submit(frame(float(i))) for i in range(5)]     # pipelined frames retry each on its own
            assert dict(c.results(ordered=True)).keys() == set(ids) and c.retried == 12
        with Client(server.address, timeout=5, busy_retries=1) as c:
            with pytest.raises(RemoteError) as err:
                c.infer(frame())
            assert err.value.code == protocol.BUSY and c.retried == 1   # bounded: then the error
        with Client(server.address, timeout=5, busy_retries=0) as c:
            with pytest.raises(RemoteError, match="busy"):
                c.infer(frame())
            assert c.retried == 0
    finally:
        server.close()
    with pytest.raises(ValueError):
        Client("tcp://127.0.0.1:1", busy_retries=-1)


def test_a_busy_reply_carries_its_retry_hint_and_a_wild_one_is_ignored():
    reply = protocol.decode_reply(protocol.encode_reply_error(3, protocol.BUSY, "full", retry_after_ms=12))
    assert reply.retry_after_ms == 12 and reply.error_code == protocol.BUSY
    assert protocol.decode_reply(protocol.encode_reply_error(3, protocol.BUSY, "x")).retry_after_ms is None
    wild = protocol.encode_reply_error(3, protocol.BUSY, "x", retry_after_ms=10**9)
    assert protocol.decode_reply(wild).retry_after_ms is None
