"""sd_notify over a real AF_UNIX datagram socket (path and abstract), watchdog interval."""
from __future__ import annotations

import os
import socket
import tempfile
import uuid

import pytest

from tunerd.daemon import sdnotify
from tunerd.daemon.sdnotify import Notifier, notify, watchdog_interval


@pytest.fixture
def listener(monkeypatch):
    # NOTE: a short directory of its own: AF_UNIX paths are limited to 107 bytes, which pytest's
    # tmp_path can exceed.
    with tempfile.TemporaryDirectory(prefix="sdn") as tmp:
        path = os.path.join(tmp, "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        yield sock
        sock.close()


def received(sock) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_stopping(listener):
    with Notifier.from_env() as n:
        assert n.enabled
        assert n.ready("serving zoo:resnet50")
        assert received(listener) == "READY=1\nSTATUS=serving zoo:resnet50"
        assert n.status("tuning\ngeneration 3")
        assert received(listener) == "STATUS=tuning generation 3"
        assert n.watchdog() and received(listener) == "WATCHDOG=1"
        assert n.stopping() and received(listener) == "STOPPING=1"
        assert n.mainpid(1234) and received(listener) == "MAINPID=1234"
        assert n.reloading()
        reload_msg = received(listener).split("\n")
        assert reload_msg[0] == "RELOADING=1" and reload_msg[1].startswith("MONOTONIC_USEC=")
        assert int(reload_msg[1].split("=")[1]) > 0


def test_notify_function_and_keywords(listener):
    assert notify("READY=1", STATUS="up")
    assert received(listener) == "READY=1\nSTATUS=up"
    with pytest.raises(ValueError):
        Notifier("/x").send("READY=1\nWATCHDOG=1")
    with pytest.raises(ValueError):
        Notifier("/x").send("no equals sign")


def test_abstract_socket(monkeypatch):
    name = f"tunerd-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert notify("READY=1")
        assert received(sock) == "READY=1"
    finally:
        sock.close()


def test_no_op_without_socket_and_never_raises(monkeypatch, tmp_path):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier.from_env()
    assert not n.enabled and n.ready() is False and n.watchdog() is False
    gone = Notifier(str(tmp_path / "nobody-listens"))
    assert gone.enabled and gone.ready() is False      # the supervisor went away: no exception
    gone.close()


def test_from_env_can_unset_for_children(listener):
    n = Notifier.from_env(unset=True)
    assert n.enabled and "NOTIFY_SOCKET" not in os.environ
    assert n.watchdog() and received(listener) == "WATCHDOG=1"
    n.close()


@pytest.mark.parametrize("env,expected", [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),      # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "junk"}, None),
    ({}, None),
])
def test_watchdog_interval(env, expected):
    assert watchdog_interval(env) == expected


def test_watchdog_interval_reads_the_environment(monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert sdnotify.watchdog_interval() == 1.0
