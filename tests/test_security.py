"""Security: hostile input against a real daemon, limits, socket permissions, loopback-only tcp by
default, CurveZMQ keys (`tunerd keygen`, tunerd.wire.security) and nothing from the wire unpickled or
evaluated. The long fuzz run is tools/fuzz_frames.py (figures in docs/RELIABILITY.md).

Daemons run as processes on the emulated big.LITTLE of CPUs 0-1 with ipc sockets in a temp dir
(tools/harness.py); they share one state directory so only the first one calibrates.
"""
from __future__ import annotations

import ast
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from fuzz_frames import fuzz  # noqa: E402
from harness import BIN, MODEL, SIZE, DaemonProcess, gone  # noqa: E402

import tunerd  # noqa: E402
from tunerd.wire import protocol  # noqa: E402
from tunerd.wire.client import Client, ClientError, ControlClient, load_curve_keypair  # noqa: E402
from tunerd.daemon.config import DaemonConfig, load_config, validate  # noqa: E402
from tunerd.errors import ConfigError  # noqa: E402

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0),
                                reason="needs CPUs 0 and 1")
LIMIT = 1 << 20        # the fuzzed daemon's max_message_bytes (MAXMSGSIZE too)
SHAPE = (1, 3, SIZE, SIZE)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def daemon(workdir):
    d = DaemonProcess(workdir, name="fz", config_text=f"[limits]\nmax_message_bytes = {LIMIT}\n")
    yield d
    if d.alive():
        assert d.stop() == 0


@pytest.fixture(scope="module")
def model():
    return tunerd.load_model(MODEL, input_size=SIZE, backend="numpy")


def dealer(address: str, **opts) -> zmq.Socket:
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.linger = 0
    for key, value in opts.items():
        s.setsockopt(getattr(zmq, key), value)
    s.connect(address)
    return s


def ask(sock: zmq.Socket, frames: list, timeout_s: float = 20.0) -> dict | None:
    sock.send_multipart(frames)
    if not sock.poll(int(timeout_s * 1000)):
        return None
    return msgpack.unpackb(sock.recv_multipart()[0])


def header(**over) -> bytes:
    return msgpack.packb({"id": 1, "shape": list(SHAPE), "dtype": "float32", **over})


# --------------------------------------------------------------------------- hostile input
def test_fuzzed_requests_get_errors_valid_ones_right_answers_memory_flat(daemon):
    report = fuzz(daemon.frames, daemon.control, daemon.pid, count=2000, max_message_bytes=LIMIT, seed=11,
                  garbage=30, log=lambda msg: None)
    assert report["failure_count"] == 0, (report["failures"], report.get("memory"))
    assert report["daemon_alive"] and report["ok"]
    assert report["valid"] > 100 and report["valid_ok"] == report["valid"]
    assert report["error_replies"] + report["transport_refused"] == report["malformed"]
    assert report["transport_refused"] >= 1          # a frame over MAXMSGSIZE: the connection dropped
    codes = set(report["errors_by_code"])
    assert {protocol.BAD_FRAMES, protocol.BAD_HEADER, protocol.BAD_SHAPE, protocol.BAD_DTYPE, protocol.BAD_PAYLOAD,
            protocol.TOO_LARGE} <= codes
    assert report["memory"]["pss_growth_mib"] < 12, report["memory"]


def test_limits_hold_through_the_daemon(daemon, model):
    sock = dealer(daemon.frames)
    try:
        cases = [
            ([header(id=2, shape=[1] * (protocol.MAX_RANK + 1)), b"\0" * 4], protocol.BAD_SHAPE),
            ([header(id=3, shape=[4097, 4097]), b""], protocol.TOO_LARGE),               # 16.8 Mi elements
            ([header(id=4), b"\0" * LIMIT], protocol.TOO_LARGE),                         # message > the limit
            ([header(id=5, pad="x" * (protocol.MAX_STR_LEN + 1)), b""], protocol.BAD_HEADER),
            ([header(id=6, pad=b"\0" * (protocol.MAX_HEADER_BYTES + 1)), b""], protocol.TOO_LARGE),
        ]
        for frames, code in cases:
            reply = ask(sock, frames)
            assert reply is not None and reply["ok"] is False and reply["error"]["code"] == code, (code, reply)
        x = np.random.default_rng(3).standard_normal(SHAPE).astype(np.float32)
        with Client(daemon.frames, timeout=30) as c:
            np.testing.assert_allclose(c.infer(x), model.run(x), rtol=0, atol=1e-6)
    finally:
        sock.close(0)


def test_a_frame_over_maxmsgsize_drops_the_connection_and_nothing_else(daemon):
    sock = dealer(daemon.frames)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.send_multipart([header(id=7), b"\0" * (LIMIT + 1)])
        assert monitor.poll(10_000) and recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        assert not sock.poll(300)
        assert daemon.alive()
        # the DEALER reconnects by itself and is served again
        reply = ask(sock, [header(id=8), np.zeros(SHAPE, np.float32).tobytes()], timeout_s=30)
        assert reply is not None and reply["ok"] is True and reply["id"] == 8
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def test_raw_bytes_on_the_ipc_socket_do_no_harm(daemon, model):
    rng = np.random.default_rng(5)
    for _ in range(50):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.connect(daemon.frames[len("ipc://"):])
            s.sendall(rng.bytes(int(rng.integers(1, 2000))))
        except OSError:
            pass
        finally:
            s.close()
    x = np.ones(SHAPE, np.float32)
    with Client(daemon.frames, timeout=30) as c:
        np.testing.assert_allclose(c.infer(x), model.run(x), rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- where it listens
def test_ipc_sockets_are_owner_and_group_only(daemon):
    for address in (daemon.frames, daemon.control):
        mode = os.stat(address[len("ipc://"):]).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o660, oct(stat.S_IMODE(mode))


@pytest.mark.parametrize("address,remote", [
    ("tcp://127.0.0.1:5555", False), ("tcp://127.1.2.3:*", False), ("tcp://[::1]:5555", False),
    ("tcp://localhost:5555", False), ("tcp://*:5555", True), ("tcp://0.0.0.0:5555", True), ("tcp://[::]:5555", True),
    ("tcp://eth0:5555", True), ("tcp://192.168.1.10:5555", True), ("tcp://tunerd.example:5555", True),
])
def test_tcp_beyond_loopback_needs_allow_remote(address, remote):
    for key in ("frames", "control"):
        cfg = DaemonConfig(**{key: address})
        if remote:
            with pytest.raises(ConfigError, match="allow_remote"):
                validate(cfg)
        else:
            validate(cfg)
        validate(DaemonConfig(**{key: address, "allow_remote": True}))


def test_allow_remote_is_a_boolean_in_the_file(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('[daemon]\nframes = "tcp://0.0.0.0:5555"\nallow_remote = true\n')
    assert load_config(str(path), required=True).allow_remote is True
    path.write_text('[daemon]\nframes = "tcp://0.0.0.0:5555"\n')
    with pytest.raises(ConfigError, match="allow_remote"):
        load_config(str(path), required=True)
    path.write_text('[daemon]\nallow_remote = "yes"\n')
    with pytest.raises(ConfigError, match="allow_remote"):
        load_config(str(path), required=True)


def test_serve_refuses_a_remote_tcp_address_without_opt_in(tmp_path):
    proc = subprocess.run([str(BIN / "tunerd"), "serve", "--frames", "tcp://0.0.0.0:0", "--control",
                           f"ipc://{tmp_path}/c.sock", "--state-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "allow_remote" in proc.stderr and proc.stderr.count("\n") <= 2, proc.stderr


# --------------------------------------------------------------------------- nothing from the wire is run
WIRE_MODULES = ("wire/protocol.py", "daemon/server.py", "daemon/control.py", "wire/client.py", "wire/ctl.py",
                "wire/security.py")


def _calls(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                names.add(f"{f.value.id}.{f.attr}")
    return names


def test_nothing_from_the_wire_is_unpickled_or_evaluated():
    package = ROOT / "tunerd"
    forbidden = {"eval", "exec", "compile", "pickle.loads", "pickle.load", "marshal.loads", "marshal.load",
                 "yaml.load", "shelve.open", "dill.loads", "cloudpickle.loads"}
    for path in package.rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        assert not (_calls(tree) & forbidden), (path, _calls(tree) & forbidden)
    for name in WIRE_MODULES:
        tree = ast.parse((package / name).read_text())
        imported = {a.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                    for a in getattr(node, "names", [])}
        imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                     if isinstance(node, ast.ImportFrom) and node.module}
        assert not imported & {"pickle", "marshal", "shelve", "dill", "cloudpickle", "yaml"}, (name, imported)
    # the protocol decodes msgpack with ext types refused and the array with frombuffer only
    source = (package / "wire" / "protocol.py").read_text()
    assert "max_ext_len=0" in source and "np.frombuffer" in source
    # NOTE: the pipeline's worker messages are pickled by multiprocessing.Connection, but they run
    # between the daemon and its own workers over socketpairs; no client byte is in them.


# --------------------------------------------------------------------------- CurveZMQ
@pytest.fixture(scope="module")
def keys(workdir):
    out = subprocess.run([str(BIN / "tunerd"), "keygen", str(workdir / "curve"), "--client", "good"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    root = workdir / "curve"
    import zmq.auth
    (workdir / "other").mkdir()
    zmq.auth.create_certificates(workdir / "other", "stranger")     # a key pair the daemon does not know
    return {"server_public": root / "server.key", "server_secret": root / "server.key_secret",
            "clients": root / "clients", "good": root / "private" / "good.key_secret",
            "stranger": workdir / "other" / "stranger.key_secret"}


def test_keygen_writes_zmq_certificates_with_private_secrets(keys, workdir):
    import zmq.auth
    public, secret = zmq.auth.load_certificate(keys["server_secret"])
    assert len(public) == 40 and len(secret) == 40
    assert zmq.auth.load_certificate(keys["server_public"]) == (public, None)
    assert list(zmq.auth.load_certificates(keys["clients"])) == [load_curve_keypair(keys["good"])[0]]
    for path in (keys["server_secret"], keys["good"]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE((workdir / "curve" / "private").stat().st_mode) == 0o700
    assert not list(keys["clients"].glob("*secret*"))
    again = subprocess.run([str(BIN / "tunerd"), "keygen", str(workdir / "curve"), "--client", "good"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "already exist" in again.stderr
    # adding a client keeps the server key
    more = subprocess.run([str(BIN / "tunerd"), "keygen", str(workdir / "curve"), "--client", "extra"],
                          capture_output=True, text=True, timeout=60)
    assert more.returncode == 0 and zmq.auth.load_certificate(keys["server_secret"])[0] == public
    (keys["clients"] / "extra.key").unlink()


def _curve_roundtrip(server_secret, client_keys_dir, client_keypair, server_public=None) -> bool:
    """A ROUTER set up by configure_curve_server on loopback tcp: does the DEALER's message arrive?"""
    from tunerd.wire.security import configure_curve_server, stop_curve_server
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    try:
        configure_curve_server(ctx, router, server_secret, client_keys_dir)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        d = ctx.socket(zmq.DEALER)
        d.linger = 0
        if client_keypair is not None:
            d.curve_publickey, d.curve_secretkey = client_keypair
            d.curve_serverkey = server_public or zmq.auth.load_certificate(server_secret)[0]
        d.connect(f"tcp://127.0.0.1:{port}")
        d.send(b"hi")
        arrived = bool(router.poll(1500))
        d.close(0)
        return arrived
    finally:
        router.close(0)
        stop_curve_server(ctx)
        ctx.term()


def test_curve_server_allows_listed_keys_or_any_key(keys):
    import zmq.auth
    good, stranger = load_curve_keypair(keys["good"]), load_curve_keypair(keys["stranger"])
    assert _curve_roundtrip(keys["server_secret"], keys["clients"], good)
    assert not _curve_roundtrip(keys["server_secret"], keys["clients"], stranger)
    assert not _curve_roundtrip(keys["server_secret"], keys["clients"], None)            # no CURVE at all
    wrong_server = zmq.curve_keypair()[0]
    assert not _curve_roundtrip(keys["server_secret"], keys["clients"], good, server_public=wrong_server)
    assert _curve_roundtrip(keys["server_secret"], None, stranger)                       # directory unset: any key
    with pytest.raises(ConfigError, match="secret"):
        _curve_roundtrip(keys["server_public"], None, good)                              # a public key only
    with pytest.raises(ConfigError, match="not a directory"):
        _curve_roundtrip(keys["server_secret"], keys["clients"] / "nope", good)


def test_daemon_with_curve_serves_known_clients_only(keys, workdir, model):
    config = (f'[security]\ncurve_secret_key_file = "{keys["server_secret"]}"\n'
              f'curve_client_keys_dir = "{keys["clients"]}"\n')
    server_key = str(keys["server_public"])
    good = {"curve_server_key": server_key, "curve_keypair": load_curve_keypair(keys["good"])}
    d = DaemonProcess(workdir, name="curve", config_text=config, state_dir=workdir / "state", ctl_options=good)
    try:
        x = np.random.default_rng(9).standard_normal(SHAPE).astype(np.float32)
        with Client(d.frames, timeout=30, **good) as c:
            np.testing.assert_allclose(c.infer(x), model.run(x), rtol=0, atol=1e-6)
        for keypair in (load_curve_keypair(keys["stranger"]), None):
            with Client(d.frames, timeout=2, curve_server_key=server_key, curve_keypair=keypair) as c:
                with pytest.raises(ClientError):
                    c.infer(x)
        plain = dealer(d.frames)
        assert ask(plain, [header(id=1), x.tobytes()], timeout_s=2) is None         # no CURVE: no reply
        plain.close(0)
        assert d.status()["frames_served"] >= 1
        with pytest.raises(ClientError):
            with ControlClient(d.control, timeout=2, curve_server_key=server_key,
                               curve_keypair=load_curve_keypair(keys["stranger"])) as ctl:
                ctl.call("status")
        # a second daemon on the same sockets must not take them over (its hello cannot get through)
        second = subprocess.run(d.argv, capture_output=True, text=True, timeout=120)
        assert second.returncode != 0 and "already" in second.stderr, second.stderr[-500:]
        assert Path(d.frames[len("ipc://"):]).exists() and Path(d.control[len("ipc://"):]).exists()
        with Client(d.frames, timeout=30, **good) as c:
            c.infer(x)
        workers = d.worker_pids()
        t0 = time.monotonic()
        assert d.stop(timeout=30) == 0                    # the ZAP thread does not hold up ctx.term()
        assert time.monotonic() - t0 < 15
        assert gone(workers)
    finally:
        if d.alive():
            d.proc.kill()
            d.proc.wait()
