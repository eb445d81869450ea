"""The daemon's two sockets: the single-instance check, binding (with CURVE when configured), closing.

Frames and control are each a ROUTER: ROUTER_MANDATORY makes a reply to a client that is gone an
error instead of a silent drop; MAXMSGSIZE bounds what one message may cost before it is decoded.
An ``ipc://`` address is a file: a stale one (a daemon that crashed) is cleared, a live one refuses
the start, and anything that is not a socket is never deleted.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import stat
from pathlib import Path

import zmq

from ..errors import ConfigError
from .config import DaemonConfig

log = logging.getLogger("tunerd")


def _ipc_in_use(path: Path) -> bool:
    """Whether some process accepts connections on the unix socket ``path`` (a stale one refuses)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True    # e.g. no permission: it cannot be told stale, so it is left alone
    finally:
        probe.close()
    return True


def _is_socket(path: Path) -> bool:
    """Whether ``path`` itself (not what a link points to) is a unix socket."""
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except OSError:
        return False


def readable(sock: zmq.Socket) -> bool:
    """A message is waiting. Asked before each recv: most ticks find nothing on one of the two
    sockets, and asking costs a third of a recv that fails with zmq.Again (profiled)."""
    return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)


class SocketsMixin:
    """The Daemon's socket methods; they use its ``cfg`` and set ``_ctx``, ``frames``, ``control``
    and the addresses bound (``frames_address``, ``control_address``)."""
    cfg: DaemonConfig
    _ctx: zmq.Context | None

    def _check_single_instance(self) -> None:
        """Refuse to start beside a live daemon, or on a path that is not a socket; clear a stale ipc
        socket left by a crash."""
        for addr in (self.cfg.frames, self.cfg.control):
            if not addr.startswith("ipc://"):
                continue
            path = Path(addr[len("ipc://"):])
            try:
                mode = os.lstat(path).st_mode
            except FileNotFoundError:
                continue
            except OSError as err:
                raise ConfigError(f"cannot check {path} ({addr}): {err}") from err
            if not stat.S_ISSOCK(mode):
                # NOTE: an address that names some other file is an operator's typo: never delete it
                raise ConfigError(f"{path} exists and is not a socket: refusing to serve on {addr}")
            # NOTE: a plain connect tells a live socket from a stale file whatever the peer speaks; a
            # control `hello` failed against a CURVE daemon (no keys) and the frames socket went
            # unchecked, so a second daemon removed a live one's sockets and took them over.
            if _ipc_in_use(path):
                raise ConfigError(f"another tunerd is already serving on {addr}")
            log.warning("removing stale socket %s (left by a daemon that did not stop cleanly)", path)
            path.unlink(missing_ok=True)

    def _bind(self) -> None:
        cfg = self.cfg
        self._ctx = zmq.Context()
        self.frames = self._ctx.socket(zmq.ROUTER)
        self.frames.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.frames.setsockopt(zmq.MAXMSGSIZE, cfg.max_message_bytes)
        self.frames.setsockopt(zmq.SNDHWM, 256)       # bounded buffering per client
        self.frames.setsockopt(zmq.RCVHWM, 1024)
        self.frames.linger = 0
        self.control = self._ctx.socket(zmq.ROUTER)
        self.control.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.control.setsockopt(zmq.MAXMSGSIZE, 1 << 20)
        self.control.linger = 0
        for sock in (self.frames, self.control):
            self._apply_curve(sock)
        for sock, addr in ((self.frames, cfg.frames), (self.control, cfg.control)):
            if addr.startswith("ipc://"):
                Path(addr[len("ipc://"):]).parent.mkdir(parents=True, exist_ok=True)
            try:
                sock.bind(addr)
            except zmq.ZMQError as err:
                if err.errno == errno.EADDRINUSE:
                    raise ConfigError(f"{addr} is in use (another tunerd running?)") from err
                raise ConfigError(f"cannot bind {addr}: {err}") from err
            if addr.startswith("ipc://"):
                os.chmod(addr[len("ipc://"):], 0o660)
        self.frames_address = self.frames.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control_address = self.control.getsockopt_string(zmq.LAST_ENDPOINT)

    def _apply_curve(self, sock) -> None:
        if not self.cfg.curve_secret_key_file:
            return
        from ..wire.security import configure_curve_server
        configure_curve_server(self._ctx, sock, self.cfg.curve_secret_key_file, self.cfg.curve_client_keys_dir)

    def _close_sockets(self) -> None:
        """Close both sockets, remove their ipc files and end the context (a no-op before _bind)."""
        if self._ctx is None:
            return
        for addr, sock in ((self.cfg.frames, self.frames), (self.cfg.control, self.control)):
            sock.close(linger=0)
            # NOTE: only a socket is removed: whatever else is there now is not ours to delete
            if addr.startswith("ipc://") and _is_socket(path := Path(addr[len("ipc://"):])):
                path.unlink(missing_ok=True)
        if self.cfg.curve_secret_key_file:
            # NOTE: the ZAP handler's thread holds sockets of this context: term() would wait for ever
            from ..wire.security import stop_curve_server
            stop_curve_server(self._ctx)
        self._ctx.term()
        self._ctx = None
