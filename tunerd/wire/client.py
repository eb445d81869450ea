"""Client library: ``Client`` sends frames to the daemon, ``ControlClient`` talks to its control socket.

    with Client("tcp://127.0.0.1:5555") as c:
        y = c.infer(x)                               # one frame, blocking
        ids = [c.submit(f) for f in frames]          # many in flight (bounded by max_in_flight)
        for id, y in c.results(): ...                # in completion order (ordered=True: by id)

A Client (like the zmq socket under it) belongs to one thread; use one Client per thread.
"""
from __future__ import annotations

import heapq
import itertools
import logging
import os
import time
from typing import Any, Iterator

import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol
from ..errors import TunerdError
from .protocol import DEFAULT_LIMITS, Limits, Reply

log = logging.getLogger(__name__)


class ClientError(TunerdError):
    """Base class of what the client raises on purpose."""


class RemoteError(ClientError):
    """The daemon answered with an error: ``code`` (see tunerd.wire.protocol) and ``message``."""

    def __init__(self, code: str, message: str, id: int | None = None):
        super().__init__(f"{code}: {message}" if message else code)
        self.code, self.message, self.id = code, message, id

    @property
    def kind(self) -> str:
        """'request', 'retry', 'server', 'control' or 'unknown' (protocol.error_kind)."""
        return protocol.error_kind(self.code)


class ClientTimeout(ClientError, TimeoutError):
    """No reply within the timeout."""


class DaemonNotRunning(ClientError):
    """Nobody answers on the control address (no socket, connection refused, or no reply)."""

    def __init__(self, address: str, detail: str = ""):
        super().__init__(f"tunerd is not running (no answer on {address}{'; ' + detail if detail else ''})")
        self.address = address


class VersionMismatch(ClientError):
    """The daemon speaks another protocol version than this client."""


# --- sockets -------------------------------------------------------------------------------------
def load_curve_keypair(path: str | os.PathLike) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a zmq certificate file (zmq.auth.create_certificates)."""
    import zmq.auth

    public, secret = zmq.auth.load_certificate(os.fspath(path))
    if not secret:
        raise ClientError(f"{path} holds no secret key (pass the .key_secret file)")
    return public, secret


def load_curve_public_key(value: str | bytes) -> bytes:
    """A server public key given as z85 text or as the path of a certificate file."""
    if isinstance(value, bytes):
        return value
    if os.path.exists(value):
        import zmq.auth

        return zmq.auth.load_certificate(value)[0]
    if len(value) != 40:
        raise ClientError(f"CURVE server key must be 40 z85 characters or a certificate file: {value!r:.60}")
    return value.encode("ascii")


def _dealer(context: zmq.Context, address: str, curve_server_key: str | bytes | None,
            curve_keypair: tuple[bytes, bytes] | None) -> zmq.Socket:
    sock = context.socket(zmq.DEALER)
    sock.linger = 0
    if curve_server_key is not None:
        public, secret = curve_keypair or zmq.curve_keypair()
        sock.curve_serverkey = load_curve_public_key(curve_server_key)
        sock.curve_publickey, sock.curve_secretkey = public, secret
    return sock


def _ms(seconds: float | None) -> int | None:
    return None if seconds is None else max(0, int(seconds * 1000))


class _Deadline:
    def __init__(self, seconds: float | None):
        self.end = None if seconds is None else time.monotonic() + seconds

    def left(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def expired(self) -> bool:
        return self.end is not None and time.monotonic() >= self.end


# --- frames --------------------------------------------------------------------------------------
class Client:
    """Frames to the daemon's frames socket (DEALER), replies matched by id.

    ``timeout`` (seconds, None = wait forever) is the default for every blocking call;
    ``max_in_flight`` bounds frames sent without a reply yet (``submit`` waits for a reply first);
    ``dtype`` converts frames before sending (the models take float32; None sends as is);
    ``curve_server_key`` (z85 or certificate file) turns on CURVE, with ``curve_keypair``
    (public, secret) as this client's identity or a fresh one.
    ``busy_retries``: a frame answered ``busy`` (the daemon full, or this client at its cap) is sent
    again after the reply's ``retry_after_ms`` (10 ms without one, at most 1 s), up to this many
    times; then its result is the busy error. 0: every busy reply is the frame's result.
    Results are read-only arrays over the received message (``.copy()`` one to write to it).
    A ``timeout`` argument left out (``...``) means the client's; None waits forever.
    """

    def __init__(self, address: str | None = None, *, timeout: float | None = 10.0, max_in_flight: int = 64,
                 dtype: str | None = "float32", curve_server_key: str | bytes | None = None,
                 curve_keypair: tuple[bytes, bytes] | None = None, context: zmq.Context | None = None,
                 limits: Limits = DEFAULT_LIMITS, busy_retries: int = 3):
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if busy_retries < 0:
            raise ValueError(f"busy_retries must be >= 0, got {busy_retries}")
        self.address = address or os.environ.get(protocol.FRAMES_ENV) or protocol.DEFAULT_FRAMES_ADDRESS
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        self.dtype = None if dtype is None else np.dtype(dtype)
        self.limits = limits
        self._ids = itertools.count(1)
        self._pending: dict[int, float] = {}   # id -> monotonic send time
        self._done: dict[int, Reply] = {}      # replies received, not yet collected
        self.busy_retries = busy_retries
        self.retried = 0                        # frames sent again after a busy reply, in all
        self._sent: dict[int, list] = {}        # id -> its request frames, while it may be sent again
        self._tries: dict[int, int] = {}        # id -> busy retries used
        self._resend: list[tuple[float, int]] = []   # (when, id): a heap of retries due
        self._sock = _dealer(context or zmq.Context.instance(), self.address, curve_server_key, curve_keypair)
        self._sock.connect(self.address)

    # context manager / lifetime
    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the socket; replies still in flight are dropped."""
        if not self._sock.closed:
            self._sock.close(linger=0)
        self._pending.clear()
        self._done.clear()
        self._forget_retries()

    def _forget_retries(self) -> None:
        self._sent.clear()
        self._tries.clear()
        self._resend.clear()

    @property
    def in_flight(self) -> int:
        """Frames sent that have no reply yet."""
        return len(self._pending)

    def sent_at(self, id: int) -> float | None:
        """time.monotonic() when frame ``id`` was sent, while it is in flight."""
        return self._pending.get(id)

    # one frame
    def infer(self, frame: np.ndarray, *, timeout: float | None = ...) -> np.ndarray:
        """The daemon's output for one frame. RemoteError on an error reply, ClientTimeout if none."""
        timeout = self.timeout if timeout is ... else timeout
        id = self.submit(frame, timeout=timeout)
        try:
            return self.result(id, timeout=timeout)
        except ClientTimeout:
            self._pending.pop(id, None)   # a late reply to it will be dropped
            self._sent.pop(id, None)
            raise

    # pipelined
    def submit(self, frame: np.ndarray, *, timeout: float | None = ...) -> int:
        """Send a frame and return its id. At max_in_flight it first waits for a reply (kept for
        result()/results()). The frame must not be modified until its result has arrived."""
        timeout = self.timeout if timeout is ... else timeout
        deadline = _Deadline(timeout)
        while len(self._pending) >= self.max_in_flight:
            if self._receive(deadline.left()) is None and deadline.expired():
                raise ClientTimeout(f"{self.max_in_flight} frames in flight and no reply from {self.address} "
                                    f"within {timeout:g} s")
        array = np.asarray(frame) if self.dtype is None else np.asarray(frame, dtype=self.dtype)
        id = next(self._ids)
        frames = protocol.encode_request(id, array)
        self._sock.sndtimeo = -1 if timeout is None else _ms(timeout)
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.Again as err:
            raise ClientTimeout(f"could not send to {self.address} within {timeout:g} s") from err
        self._pending[id] = time.monotonic()
        if self.busy_retries:
            self._sent[id] = frames
        return id

    def result(self, id: int, *, timeout: float | None = ...) -> np.ndarray:
        """The output for a submitted id (waits for it; other replies are kept)."""
        timeout = self.timeout if timeout is ... else timeout
        if id not in self._done and id not in self._pending:
            raise KeyError(f"no frame {id} in flight or waiting")
        deadline = _Deadline(timeout)
        while id not in self._done:
            if self._receive(deadline.left()) is None and deadline.expired():
                raise ClientTimeout(f"no reply to frame {id} from {self.address} within {timeout:g} s")
        return _unwrap(self._done.pop(id))

    def replies(self, timeout: float | None = ...) -> Iterator[Reply]:
        """Every outstanding reply, errors included, in completion order, until none is in flight.
        ``timeout`` bounds the wait for each next reply (ClientTimeout)."""
        timeout = self.timeout if timeout is ... else timeout
        while self._done or self._pending:
            if self._done:
                yield self._done.pop(next(iter(self._done)))
                continue
            deadline = _Deadline(timeout)
            while not self._done:
                if self._receive(deadline.left()) is None and deadline.expired():
                    raise ClientTimeout(f"{len(self._pending)} frames without a reply from {self.address} "
                                        f"after {timeout:g} s")

    def results(self, timeout: float | None = ..., *, ordered: bool = False
                ) -> Iterator[tuple[int, np.ndarray]]:
        """(id, output) for every outstanding frame, in completion order or, with ``ordered``, in
        submission order. An error reply raises RemoteError (its ``id`` set); iterate again to go on."""
        if not ordered:
            for reply in self.replies(timeout):
                yield reply.id, _unwrap(reply)
            return
        while self._done or self._pending:
            id = min(itertools.chain(self._done, self._pending))
            yield id, self.result(id, timeout=timeout)

    def collect(self, timeout: float = 0.0) -> list[Reply]:
        """The replies that arrive within ``timeout`` (waits for the first, then takes what is
        ready); never raises ClientTimeout. For open-loop load generators."""
        deadline = _Deadline(timeout)
        while not self._done and self._pending and not deadline.expired():
            self._receive(deadline.left())
        while self._pending and self._receive(0) is not None:
            pass
        done, self._done = list(self._done.values()), {}
        return done

    def abandon(self) -> int:
        """Forget every frame in flight (their late replies are dropped); returns how many."""
        count = len(self._pending)
        self._pending.clear()
        self._forget_retries()
        return count

    def _send_due_retries(self) -> float | None:
        """Send the retries that are due; seconds until the next one (None: none waiting)."""
        now = time.monotonic()
        while self._resend and self._resend[0][0] <= now:
            _, id = heapq.heappop(self._resend)
            frames = self._sent.get(id)
            if frames is None or id not in self._pending:
                continue                          # given up on meanwhile (timeout, abandon)
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                heapq.heappush(self._resend, (now + 0.001, id))
                break
            self.retried += 1
        return max(0.0, self._resend[0][0] - now) if self._resend else None

    def _retry_busy(self, id: int, reply: Reply) -> bool:
        """Schedule frame ``id`` again if ``reply`` is busy and it has retries left."""
        if reply.ok or reply.error_code != protocol.BUSY or id not in self._sent:
            return False
        used = self._tries.get(id, 0)
        if used >= self.busy_retries:
            return False
        self._tries[id] = used + 1
        wait_ms = reply.retry_after_ms if reply.retry_after_ms is not None else 10
        heapq.heappush(self._resend, (time.monotonic() + min(wait_ms, 1000) / 1000, id))
        return True

    def _receive(self, timeout: float | None) -> Reply | None:
        """Wait up to timeout for one reply and file it under _done; None when none came (or it
        belonged to no frame in flight, or was a busy reply whose frame goes again)."""
        if self._resend:
            due = self._send_due_retries()
            if due is not None:
                timeout = due if timeout is None else min(timeout, due)
        if not self._sock.poll(_ms(timeout) if timeout is not None else None, zmq.POLLIN):
            return None
        frames = self._sock.recv_multipart(copy=False)
        reply = protocol.decode_reply(frames, limits=self.limits)
        id = reply.id
        if id is None and len(self._pending) == 1:
            # NOTE: the server could not read the request's id; with one frame in flight it is that one.
            id = next(iter(self._pending))
            reply = Reply(id, reply.ok, reply.array, reply.epoch, reply.latency_us, reply.error_code,
                          reply.error_message)
        if id not in self._pending:
            log.debug("dropping a reply to frame %s, which is not in flight", id)
            return None
        if self._retry_busy(id, reply):
            return None
        del self._pending[id]
        self._sent.pop(id, None)
        self._tries.pop(id, None)
        self._done[id] = reply
        return reply


def _unwrap(reply: Reply) -> np.ndarray:
    if not reply.ok:
        raise RemoteError(reply.error_code or protocol.INTERNAL, reply.error_message or "", reply.id)
    return reply.array


# --- control -------------------------------------------------------------------------------------
_MONITOR_IDS = itertools.count(1)
_CONNECTED = zmq.EVENT_CONNECTED | getattr(zmq, "EVENT_HANDSHAKE_SUCCEEDED", 0)
_HANDSHAKE_FAILED = (getattr(zmq, "EVENT_HANDSHAKE_FAILED_NO_DETAIL", 0)
                     | getattr(zmq, "EVENT_HANDSHAKE_FAILED_PROTOCOL", 0)
                     | getattr(zmq, "EVENT_HANDSHAKE_FAILED_AUTH", 0))


def default_control_address() -> str:
    return os.environ.get(protocol.CONTROL_ENV) or protocol.DEFAULT_CONTROL_ADDRESS


class ControlClient:
    """The daemon's control socket: ``call(cmd, **args) -> dict`` (the reply without ok/id).

    The first call says ``hello`` and checks the protocol version (VersionMismatch). Nobody
    answering (no ipc socket file, connection refused, no reply within ``timeout``) raises
    DaemonNotRunning; an error reply raises RemoteError.
    """

    def __init__(self, address: str | None = None, timeout: float = 5.0, *,
                 curve_server_key: str | bytes | None = None, curve_keypair: tuple[bytes, bytes] | None = None,
                 context: zmq.Context | None = None):
        self.address = address or default_control_address()
        self.timeout = timeout
        self.daemon: dict | None = None    # the hello reply, once said
        self._ids = itertools.count(1)
        self._check_ipc_path()
        ctx = context or zmq.Context.instance()
        self._sock = _dealer(ctx, self.address, curve_server_key, curve_keypair)
        # NOTE: the monitor is attached before connect() so no connection event can be missed; it is
        # how "connection refused" is told apart from "slow" without waiting out the timeout. Its
        # inproc address is ours and unique: pyzmq's get_monitor_socket() names it after the socket's
        # fd, and a new socket reusing the fd of one just closed can find that name still bound
        # (libzmq releases it asynchronously) -> "Address already in use".
        monitor_address = f"inproc://tunerd.control-monitor.{os.getpid()}.{next(_MONITOR_IDS)}"
        self._monitor = None
        try:
            self._sock.monitor(monitor_address, zmq.EVENT_ALL)
            self._monitor = ctx.socket(zmq.PAIR)
            self._monitor.connect(monitor_address)
            self._connected = False
            self._sock.connect(self.address)
        except BaseException:
            self.close()
            raise

    def _check_ipc_path(self) -> None:
        if not self.address.startswith("ipc://"):
            return
        path = self.address[len("ipc://"):]
        if path.startswith("@"):    # abstract socket: nothing on disk to check
            return
        if not os.path.exists(path):
            raise DaemonNotRunning(self.address)
        if not os.access(path, os.R_OK | os.W_OK):
            raise ClientError(f"permission denied on {path} (is this user in the group tunerd?)")

    def __enter__(self) -> "ControlClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if not self._sock.closed:
            self._sock.disable_monitor()
            if self._monitor is not None:
                self._monitor.close(linger=0)
            self._sock.close(linger=0)

    def hello(self) -> dict:
        """Say hello (once) and check the daemon's protocol version."""
        if self.daemon is None:
            try:
                reply = self._exchange(protocol.HELLO, {})
            except RemoteError as err:
                if err.code == protocol.VERSION_MISMATCH:
                    raise VersionMismatch(f"version mismatch: {err.message}") from err
                raise
            theirs = reply.get("protocol")
            if reply.get("daemon") != protocol.DAEMON_NAME:
                raise ClientError(f"{self.address} is not a tunerd control socket (hello: {reply!r:.100})")
            if theirs != protocol.PROTOCOL_VERSION:
                raise VersionMismatch(
                    f"protocol version mismatch: this tunerctl speaks {protocol.PROTOCOL_VERSION}, tunerd "
                    f"{reply.get('version', '?')} on {self.address} speaks {theirs}; install matching versions")
            self.daemon = reply
        return self.daemon

    def call(self, cmd: str, **args: Any) -> dict:
        self.hello()
        if cmd == protocol.HELLO:
            return self.daemon
        try:
            return self._exchange(cmd, args)
        except RemoteError as err:
            if err.code == protocol.VERSION_MISMATCH:
                raise VersionMismatch(f"version mismatch: {err.message}") from err
            raise

    def _exchange(self, cmd: str, args: dict) -> dict:
        id = next(self._ids)
        self._sock.send(protocol.encode_control_request(cmd, id=id, **args), zmq.NOBLOCK)
        deadline = _Deadline(self.timeout)
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        while not deadline.expired():
            events = dict(poller.poll(_ms(deadline.left())))
            if self._monitor in events:
                self._on_monitor_event(recv_monitor_message(self._monitor))
            if self._sock in events:
                reply = protocol.decode_control_reply(self._sock.recv_multipart())
                if reply.get("id") not in (id, None):
                    continue    # a late answer to an earlier request that timed out
                if not reply["ok"]:
                    error = reply["error"]
                    raise RemoteError(error["code"], str(error.get("message", "")), id)
                return {k: v for k, v in reply.items() if k not in ("ok", "id")}
        detail = (f"connected, but no reply to {cmd!r} within {self.timeout:g} s" if self._connected
                  else f"no connection within {self.timeout:g} s")
        raise DaemonNotRunning(self.address, detail)

    def _on_monitor_event(self, event: dict) -> None:
        kind = event["event"]
        if kind & _CONNECTED:
            self._connected = True
        elif kind == zmq.EVENT_DISCONNECTED:
            self._connected = False
        elif kind == zmq.EVENT_CONNECT_RETRIED and not self._connected:
            raise DaemonNotRunning(self.address, "connection refused")
        elif kind & _HANDSHAKE_FAILED:
            raise ClientError(f"security handshake with {self.address} failed (CURVE keys?)")


def control_call(cmd: str, address: str | None = None, timeout: float = 5.0, **args: Any) -> dict:
    """One control command on a fresh connection."""
    with ControlClient(address, timeout) as ctl:
        return ctl.call(cmd, **args)

