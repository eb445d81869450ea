"""sd_notify(3) without libsystemd: datagrams to $NOTIFY_SOCKET, a no-op when it is unset.

    notifier = Notifier.from_env()
    notifier.ready("serving zoo:resnet50")       # READY=1 + STATUS=...
    interval = watchdog_interval()                # seconds between WATCHDOG=1 pings, or None
    notifier.watchdog(); notifier.stopping()

The protocol (systemd's sd_notify man page, "NOTES"): newline-separated VAR=VALUE assignments in one
AF_UNIX SOCK_DGRAM datagram; the socket path may name an abstract socket when it begins with '@'.
Sending never raises: a daemon must not die because its supervisor went away.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from typing import Mapping

log = logging.getLogger(__name__)

NOTIFY_ENV = "NOTIFY_SOCKET"


def _address(path: str) -> str | bytes:
    if path.startswith("@"):       # abstract namespace: leading NUL byte, no file
        return b"\0" + path[1:].encode()
    return path


class Notifier:
    """Sends sd_notify messages to one socket path (or none: every method is then a no-op)."""

    def __init__(self, path: str | None):
        self.path = path or None
        self._sock: socket.socket | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, unset: bool = False) -> "Notifier":
        """The notifier for $NOTIFY_SOCKET. ``unset`` removes the variable from os.environ so
        child processes (pipeline workers) do not inherit it."""
        env = os.environ if env is None else env
        notifier = cls(env.get(NOTIFY_ENV))
        if unset:
            os.environ.pop(NOTIFY_ENV, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def send(self, *assignments: str, **fields: object) -> bool:
        """Send ``VAR=VALUE`` lines (positional) and VAR=value keywords in one datagram; True if sent."""
        if not self.path:
            return False
        lines = list(assignments) + [f"{key}={value}" for key, value in fields.items()]
        for line in lines:
            if "\n" in line or "=" not in line:
                raise ValueError(f"not a single VAR=VALUE line: {line!r}")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), _address(self.path))
        except OSError as err:
            log.debug("sd_notify to %s failed: %s", self.path, err)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (after the sockets are bound: systemd then considers the service started)."""
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=text, shown by `systemctl status` (one line)."""
        return self.send(f"STATUS={' '.join(text.splitlines())}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        """RELOADING=1 with MONOTONIC_USEC (systemd >= 253 requires it); send ready() when done."""
        return self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str | None = None) -> bool:
        return self.send("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def mainpid(self, pid: int | None = None) -> bool:
        return self.send(f"MAINPID={os.getpid() if pid is None else int(pid)}")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def notify(*assignments: str, **fields: object) -> bool:
    """One message to $NOTIFY_SOCKET, e.g. ``notify("READY=1", STATUS="serving")``."""
    with Notifier.from_env() as notifier:
        return notifier.send(*assignments, **fields)


def watchdog_interval(env: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WatchdogSec=, as sd_watchdog_enabled(3) advises),
    or None when the watchdog is off or meant for another process (WATCHDOG_PID)."""
    env = os.environ if env is None else env
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    watchdog_pid = env.get("WATCHDOG_PID")
    if watchdog_pid:
        try:
            if int(watchdog_pid) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1e6
