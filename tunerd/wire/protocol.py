"""The wire protocol: frames and control messages, encoded and checked. Pure: no sockets here.

Frames socket (the server binds a ROUTER, a client connects a DEALER; no empty delimiter frame):
  request  [header, payload]  header = msgpack {"id": int, "shape": [..], "dtype": "float32"},
                              payload = the array's raw C-order little-endian bytes
  reply    [header, payload]  header = {"id", "ok": True, "shape", "dtype", "epoch", "latency_us"}
       or  [header]           header = {"id", "ok": False, "error": {"code": str, "message": str}}
Control socket (ROUTER / DEALER too, one msgpack map per message):
  request  {"v": PROTOCOL_VERSION, "cmd": str, "id"?: int, ...args}
  reply    {"ok": True, "id"?, ...}  or  {"ok": False, "id"?, "error": {"code", "message"}}

Nothing from the wire is ever unpickled or evaluated: headers are msgpack with bounded sizes and the
array is rebuilt with ``np.frombuffer`` over the payload frame. Every malformed input raises
``ProtocolError`` with one of the codes below, which the server sends back as an error reply.
docs/protocol.md is the long form of this module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import msgpack
import numpy as np

from ..errors import TunerdError

PROTOCOL_VERSION = 1
DAEMON_NAME = "tunerd"

# Default addresses (DESIGN.md, Layout). Developer runs use loopback tcp or a temp dir instead.
DEFAULT_FRAMES_ADDRESS = "ipc:///run/tunerd/frames.sock"
DEFAULT_CONTROL_ADDRESS = "ipc:///run/tunerd/control.sock"
FRAMES_ENV = "TUNERD_FRAMES"
CONTROL_ENV = "TUNERD_CONTROL"

# --- limits -------------------------------------------------------------------------------------
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024   # header + payload of one request
DEFAULT_MAX_ELEMENTS = 16 * 1024 * 1024         # elements of one array (64 MiB of float32)
MAX_RANK = 8
MAX_HEADER_BYTES = 64 * 1024                    # a header is a few dozen bytes; anything big is junk
MAX_ID = 2**63 - 1                              # ids fit a signed 64-bit integer in every language
MAX_STR_LEN = 4096                              # longest string accepted inside a header

# Array element types the wire knows, always little-endian. A server accepts only its model's.
DTYPES: dict[str, np.dtype] = {
    name: np.dtype(code) for name, code in [
        ("float32", "<f4"), ("float16", "<f2"), ("float64", "<f8"),
        ("int8", "i1"), ("uint8", "u1"), ("int16", "<i2"), ("int32", "<i4"), ("int64", "<i8"),
    ]
}


@dataclass(frozen=True)
class Limits:
    """What a decoder accepts; the server takes max_message_bytes from its config ([limits])."""

    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_elements: int = DEFAULT_MAX_ELEMENTS
    max_rank: int = MAX_RANK
    max_header_bytes: int = MAX_HEADER_BYTES

    def __post_init__(self):
        for name in ("max_message_bytes", "max_elements", "max_rank", "max_header_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()
MAX_RETRY_AFTER_MS = 60_000     # a busy reply's retry hint beyond this is not believed

# --- error codes, grouped by kind -----------------------------------------------------------------
# The request was malformed: the client must fix it; retrying the same bytes fails the same way.
BAD_FRAMES = "bad_frames"        # wrong number of frames
BAD_HEADER = "bad_header"        # not msgpack, not a map, missing keys, wrong types, bad id
BAD_SHAPE = "bad_shape"          # shape malformed (negative, not ints, rank too high) or not the model's
BAD_DTYPE = "bad_dtype"          # unknown dtype or not the model's
BAD_PAYLOAD = "bad_payload"      # payload size does not match shape x dtype (truncated or oversize)
TOO_LARGE = "too_large"          # message or element count over the configured limits
# The server cannot take it now: retry later (with back-off).
BUSY = "busy"                    # admission queue full
SHUTTING_DOWN = "shutting_down"  # the daemon is stopping; frames in flight still get answered
# The server failed: not the client's fault.
INTERNAL = "internal"
WORKER_FAILED = "worker_failed"  # a pipeline worker died or raised while running this frame
# Control socket.
UNKNOWN_COMMAND = "unknown_command"
BAD_ARGUMENT = "bad_argument"    # missing or ill-typed command argument
BAD_CONFIG = "bad_config"        # a pipeline config that does not parse or fit the platform/model
VERSION_MISMATCH = "version_mismatch"

REQUEST_ERRORS = (BAD_FRAMES, BAD_HEADER, BAD_SHAPE, BAD_DTYPE, BAD_PAYLOAD, TOO_LARGE)
RETRYABLE_ERRORS = (BUSY, SHUTTING_DOWN)
SERVER_ERRORS = (INTERNAL, WORKER_FAILED)
CONTROL_ERRORS = (UNKNOWN_COMMAND, BAD_ARGUMENT, BAD_CONFIG, VERSION_MISMATCH)
ERROR_KINDS = {
    **{code: "request" for code in REQUEST_ERRORS},
    **{code: "retry" for code in RETRYABLE_ERRORS},
    **{code: "server" for code in SERVER_ERRORS},
    **{code: "control" for code in CONTROL_ERRORS},
}
ERROR_CODES = tuple(ERROR_KINDS)


def error_kind(code: str) -> str:
    """'request', 'retry', 'server', 'control', or 'unknown' for a code this version doesn't know."""
    return ERROR_KINDS.get(code, "unknown")


# --- control commands --------------------------------------------------------------------------
HELLO, STATUS, RETUNE, PIN, UNPIN, HISTORY = "hello", "status", "retune", "pin", "unpin", "history"
CONTROL_COMMANDS = (HELLO, STATUS, RETUNE, PIN, UNPIN, HISTORY)


class ProtocolError(TunerdError, ValueError):
    """A message that breaks the protocol. ``code`` is one of ERROR_CODES; ``id`` the request's id
    when it could be read (the server echoes it in the error reply), else None."""

    def __init__(self, code: str, message: str, id: int | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.id = id


# --- helpers ---------------------------------------------------------------------------------------
def _buffer(frame: Any) -> memoryview:
    """bytes, bytearray, memoryview or a zmq.Frame (duck-typed: no zmq import here) as a byte view."""
    buf = getattr(frame, "buffer", frame)
    try:
        view = memoryview(buf)
        return view.cast("B") if view.format != "B" or view.ndim != 1 else view
    except TypeError as err:   # not a buffer, or a non-contiguous one
        raise ProtocolError(BAD_FRAMES, f"a frame must be contiguous bytes, not {type(frame).__name__}") from err


def _unpack(data: memoryview, max_bytes: int, what: str) -> Any:
    if len(data) > max_bytes:
        raise ProtocolError(TOO_LARGE, f"{what} is {len(data)} bytes (limit {max_bytes})")
    try:
        # NOTE: every container/string limit is bounded by the byte count (checked above); ext types
        # (msgpack's extension hook, timestamps) are refused outright: the protocol uses none.
        return msgpack.unpackb(
            data, raw=False, strict_map_key=True, use_list=True,
            max_str_len=min(max_bytes, MAX_STR_LEN), max_bin_len=min(max_bytes, MAX_STR_LEN),
            max_array_len=max_bytes, max_map_len=max_bytes, max_ext_len=0,
        )
    # NOTE: msgpack documents "other exceptions can be raised during unpacking" besides ValueError,
    # FormatError and StackError (e.g. UnicodeDecodeError, TypeError on unhashable map keys);
    # any of them means junk from the wire, which must become an error reply and never a crash.
    except Exception as err:  # noqa: BLE001
        raise ProtocolError(BAD_HEADER, f"{what} is not valid msgpack ({type(err).__name__})") from err


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_id(value: Any) -> int:
    """A request id: an integer in [0, MAX_ID]; raises ProtocolError(bad_header) otherwise."""
    if not _is_int(value):
        raise ProtocolError(BAD_HEADER, f"'id' must be an integer, not {type(value).__name__}")
    if not 0 <= value <= MAX_ID:
        raise ProtocolError(BAD_HEADER, f"'id' must be in 0..2**63-1, got {value}")
    return value


def _peek_id(frame: Any) -> int | None:
    """The id of a header if one can be read, for error replies to otherwise broken requests."""
    try:
        header = _unpack(_buffer(frame), MAX_HEADER_BYTES, "header")
        return check_id(header.get("id")) if isinstance(header, dict) else None
    except ProtocolError:
        return None


def _shape(value: Any, limits: Limits, id: int | None) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) for d in value):
        raise ProtocolError(BAD_SHAPE, "'shape' must be a list of integers", id)
    if len(value) > limits.max_rank:
        raise ProtocolError(BAD_SHAPE, f"rank {len(value)} is over the limit of {limits.max_rank}", id)
    if any(d < 0 for d in value):
        raise ProtocolError(BAD_SHAPE, f"negative dimension in shape {value}", id)
    if any(d > limits.max_elements for d in value) or math.prod(value) > limits.max_elements:
        raise ProtocolError(TOO_LARGE, f"shape {value} is over the limit of {limits.max_elements} elements", id)
    return tuple(value)


def _dtype(value: Any, id: int | None) -> np.dtype:
    if not isinstance(value, str) or value not in DTYPES:
        shown = value if isinstance(value, str) else type(value).__name__
        raise ProtocolError(BAD_DTYPE, f"dtype {shown!r:.40} is not one of {', '.join(DTYPES)}", id)
    return DTYPES[value]


def _array(payload: memoryview, shape: tuple[int, ...], dtype: np.dtype, id: int | None) -> np.ndarray:
    count = math.prod(shape)
    need = count * dtype.itemsize
    if len(payload) != need:
        kind = "truncated" if len(payload) < need else "oversize"
        raise ProtocolError(
            BAD_PAYLOAD, f"payload {kind}: {len(payload)} bytes, shape {list(shape)} {dtype.name} needs {need}", id)
    return np.frombuffer(payload, dtype=dtype, count=count).reshape(shape)


def _wire_dtype_name(array: np.ndarray) -> str:
    for name, dtype in DTYPES.items():
        if (array.dtype.kind, array.dtype.itemsize) == (dtype.kind, dtype.itemsize):   # any byte order
            return name
    raise ValueError(f"dtype {array.dtype} cannot be sent; use one of {', '.join(DTYPES)}")


def _payload(array: np.ndarray) -> tuple[np.ndarray, memoryview | bytes]:
    """A C-contiguous little-endian view of array (copied only when it is not one already)."""
    name = _wire_dtype_name(array)
    if array.dtype != DTYPES[name] or not array.flags.c_contiguous:
        array = np.array(array, dtype=DTYPES[name], order="C")   # (ascontiguousarray turns 0-d into 1-d)
    return array, (memoryview(array).cast("B") if array.size else b"")


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


# --- frames socket ------------------------------------------------------------------------------
def encode_request(id: int, array: np.ndarray) -> list:
    """[header bytes, payload view]. The payload is a view of ``array`` (no copy when the array is
    C-contiguous little-endian), so it must not be modified until it has been sent."""
    check_id(id)
    array, payload = _payload(np.asarray(array))
    header = _pack({"id": id, "shape": list(array.shape), "dtype": _wire_dtype_name(array)})
    return [header, payload]


def decode_request(
    frames: Sequence[Any], *, expected_shape: Sequence[int | None] | None = None,
    expected_dtype: str | None = "float32", limits: Limits = DEFAULT_LIMITS,
) -> tuple[int, np.ndarray]:
    """(id, array) from a request's frames (without the ROUTER identity), or ProtocolError.

    ``expected_shape`` may hold None for a free dimension; None for the whole accepts any shape.
    The array is a read-only view of the payload frame. Extra header keys are ignored.
    """
    if not isinstance(frames, (list, tuple)) or len(frames) != 2:
        count = len(frames) if isinstance(frames, (list, tuple)) else "?"
        peek = _peek_id(frames[0]) if isinstance(frames, (list, tuple)) and frames else None
        raise ProtocolError(BAD_FRAMES, f"a request is 2 frames (header, payload), got {count}", peek)
    header_buf, payload = _buffer(frames[0]), _buffer(frames[1])
    size = len(header_buf) + len(payload)
    if size > limits.max_message_bytes:
        raise ProtocolError(TOO_LARGE, f"message is {size} bytes (limit {limits.max_message_bytes})",
                            _peek_id(header_buf))
    header = _unpack(header_buf, limits.max_header_bytes, "header")
    if not isinstance(header, dict):
        raise ProtocolError(BAD_HEADER, f"header must be a map, not {type(header).__name__}")
    missing = [key for key in ("id", "shape", "dtype") if key not in header]
    if "id" in missing:
        raise ProtocolError(BAD_HEADER, "header has no 'id'")
    id = check_id(header["id"])
    if missing:
        raise ProtocolError(BAD_HEADER, f"header has no {', '.join(repr(k) for k in missing)}", id)
    shape = _shape(header["shape"], limits, id)
    dtype = _dtype(header["dtype"], id)
    if expected_shape is not None and (
        len(shape) != len(expected_shape)
        or any(want is not None and got != want for got, want in zip(shape, expected_shape))
    ):
        want = ["*" if d is None else d for d in expected_shape]
        raise ProtocolError(BAD_SHAPE, f"shape {list(shape)} does not match the model's input {want}", id)
    if expected_dtype is not None and header["dtype"] != expected_dtype:
        raise ProtocolError(BAD_DTYPE, f"dtype {header['dtype']} does not match the model's {expected_dtype}", id)
    return id, _array(payload, shape, dtype, id)


def encode_reply_ok(id: int, array: np.ndarray, epoch: int, latency_us: int) -> list:
    """[header, payload view] of a successful reply."""
    array, payload = _payload(np.asarray(array))
    header = _pack({"id": id, "ok": True, "shape": list(array.shape), "dtype": _wire_dtype_name(array),
                    "epoch": int(epoch), "latency_us": int(latency_us)})
    return [header, payload]


def encode_reply_error(id: int | None, code: str, message: str, *, retry_after_ms: int | None = None) -> list:
    """[header] of an error reply; id is None when the request's id could not be read;
    ``retry_after_ms``: when a retry has a chance (busy)."""
    error = {"code": str(code), "message": str(message)}
    if retry_after_ms is not None:
        error["retry_after_ms"] = int(retry_after_ms)
    return [_pack({"id": id, "ok": False, "error": error})]


@dataclass(frozen=True)
class Reply:
    """A decoded frames-socket reply. ``array`` is a read-only view of the received payload."""

    id: int | None
    ok: bool
    array: np.ndarray | None = None
    epoch: int | None = None
    latency_us: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    retry_after_ms: int | None = None      # busy: when the server expects room again


def decode_reply(frames: Sequence[Any], *, limits: Limits = DEFAULT_LIMITS) -> Reply:
    """A reply from its frames, or ProtocolError when the server (or something else) sent junk."""
    if not isinstance(frames, (list, tuple)) or len(frames) not in (1, 2):
        raise ProtocolError(BAD_FRAMES, "a reply is 1 or 2 frames")
    header = _unpack(_buffer(frames[0]), limits.max_header_bytes, "reply header")
    if not isinstance(header, dict) or not isinstance(header.get("ok"), bool):
        raise ProtocolError(BAD_HEADER, "reply header must be a map with a boolean 'ok'")
    id = header.get("id")
    id = None if id is None else check_id(id)
    if not header["ok"]:
        error = header.get("error")
        if not isinstance(error, dict):
            raise ProtocolError(BAD_HEADER, "error reply has no 'error' map", id)
        retry = error.get("retry_after_ms")
        return Reply(id, False, error_code=str(error.get("code", INTERNAL)),
                     error_message=str(error.get("message", "")),
                     retry_after_ms=retry if _is_int(retry) and 0 <= retry <= MAX_RETRY_AFTER_MS else None)
    if len(frames) != 2:
        raise ProtocolError(BAD_FRAMES, "a successful reply is 2 frames", id)
    shape = _shape(header.get("shape"), limits, id)
    dtype = _dtype(header.get("dtype"), id)
    epoch, latency = header.get("epoch"), header.get("latency_us")
    return Reply(id, True, _array(_buffer(frames[1]), shape, dtype, id),
                 epoch=epoch if _is_int(epoch) else None, latency_us=latency if _is_int(latency) else None)


# --- control socket -----------------------------------------------------------------------------
@dataclass(frozen=True)
class ControlRequest:
    cmd: str
    args: dict
    id: int | None = None
    version: Any = PROTOCOL_VERSION


def encode_control_request(cmd: str, *, id: int | None = None, version: int = PROTOCOL_VERSION,
                           **args: Any) -> bytes:
    msg = {"v": version, "cmd": cmd, **args}
    if id is not None:
        msg["id"] = check_id(id)
    return _pack(msg)


def decode_control_request(frames: Sequence[Any] | bytes, *, commands: Iterable[str] = CONTROL_COMMANDS,
                           limits: Limits = DEFAULT_LIMITS) -> ControlRequest:
    """A control request, or ProtocolError. ``hello`` is accepted from any protocol version (so a
    client can learn ours); every other command needs ``v == PROTOCOL_VERSION``."""
    if isinstance(frames, (list, tuple)):
        if len(frames) != 1:
            raise ProtocolError(BAD_FRAMES, f"a control request is 1 frame, got {len(frames)}",
                                _peek_id(frames[0]) if frames else None)
        frames = frames[0]
    msg = _unpack(_buffer(frames), limits.max_header_bytes, "control request")
    if not isinstance(msg, dict):
        raise ProtocolError(BAD_HEADER, f"control request must be a map, not {type(msg).__name__}")
    id = None
    if msg.get("id") is not None:
        id = check_id(msg["id"])
    cmd = msg.get("cmd")
    if not isinstance(cmd, str):
        raise ProtocolError(BAD_HEADER, "control request has no string 'cmd'", id)
    version = msg.get("v")
    if cmd != HELLO and version != PROTOCOL_VERSION:
        raise ProtocolError(VERSION_MISMATCH,
                            f"this daemon speaks protocol {PROTOCOL_VERSION}, the request is version {version!r:.20}", id)
    if cmd not in set(commands):
        raise ProtocolError(UNKNOWN_COMMAND, f"unknown command {cmd!r:.40}", id)
    args = {k: v for k, v in msg.items() if k not in ("v", "cmd", "id")}
    return ControlRequest(cmd, args, id, version)


def encode_control_ok(result: Mapping[str, Any] | None = None, *, id: int | None = None) -> bytes:
    """A successful control reply: ``{"ok": True, "id"?, **result}``."""
    msg: dict[str, Any] = {"ok": True}
    if id is not None:
        msg["id"] = id
    msg.update({k: v for k, v in (result or {}).items() if k not in ("ok", "id")})
    return _pack(msg)


def encode_control_error(code: str, message: str, *, id: int | None = None) -> bytes:
    msg: dict[str, Any] = {"ok": False, "error": {"code": str(code), "message": str(message)}}
    if id is not None:
        msg["id"] = id
    return _pack(msg)


def decode_control_reply(frames: Sequence[Any] | bytes, *, limits: Limits = DEFAULT_LIMITS) -> dict:
    """The reply map, checked to have a boolean 'ok' (and an 'error' map when not ok)."""
    if isinstance(frames, (list, tuple)):
        if len(frames) != 1:
            raise ProtocolError(BAD_FRAMES, f"a control reply is 1 frame, got {len(frames)}")
        frames = frames[0]
    # NOTE: status and history replies may be bigger than a frame header; allow a whole message.
    msg = _unpack(_buffer(frames), limits.max_message_bytes, "control reply")
    if not isinstance(msg, dict) or not isinstance(msg.get("ok"), bool):
        raise ProtocolError(BAD_HEADER, "control reply must be a map with a boolean 'ok'")
    if not msg["ok"]:
        error = msg.get("error")
        if not isinstance(error, dict) or not isinstance(error.get("code"), str):
            raise ProtocolError(BAD_HEADER, "control error reply has no 'error' map with a 'code'")
    return msg


def hello_result(version: str | None = None) -> dict:
    """What the daemon answers to ``hello`` (besides ok/id)."""
    if version is None:
        from ..version import __version__ as version
    return {"protocol": PROTOCOL_VERSION, "daemon": DAEMON_NAME, "version": version}
