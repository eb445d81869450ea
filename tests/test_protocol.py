"""Wire protocol: round trips, every malformed case mapped to its error code, and a fuzz run."""
from __future__ import annotations

import pathlib
import random

import msgpack
import numpy as np
import pytest

from tunerd.wire import protocol as P

SHAPE = (1, 3, 4, 4)


def pack(obj) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def request(header: dict, payload: bytes | None = None) -> list:
    if payload is None:
        payload = np.zeros(SHAPE, np.float32).tobytes()
    return [pack(header), payload]


def good_header(**changes) -> dict:
    return {"id": 5, "shape": list(SHAPE), "dtype": "float32", **changes}


def code_of(frames, **kwargs) -> tuple[str, int | None]:
    with pytest.raises(P.ProtocolError) as info:
        P.decode_request(frames, **kwargs)
    return info.value.code, info.value.id


# --- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", list(P.DTYPES))
@pytest.mark.parametrize("shape", [(), (0,), (7,), (1, 3, 4, 4), (2, 1, 1, 1, 1, 1, 1, 3)])
def test_request_round_trip(dtype, shape):
    x = (np.arange(int(np.prod(shape))) % 100).astype(dtype).reshape(shape)
    id, y = P.decode_request(P.encode_request(9, x), expected_shape=None, expected_dtype=None)
    assert id == 9 and y.shape == shape and y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(x, y)


def test_encode_request_does_not_copy_a_contiguous_array():
    x = np.ones(SHAPE, np.float32)
    header, payload = P.encode_request(1, x)
    assert np.shares_memory(np.frombuffer(payload, np.float32), x)
    assert msgpack.unpackb(header) == {"id": 1, "shape": list(SHAPE), "dtype": "float32"}


def test_encode_request_makes_non_contiguous_and_big_endian_arrays_wire_ready():
    x = np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2]
    _, y = P.decode_request(P.encode_request(1, x), expected_shape=None)
    np.testing.assert_array_equal(x, y)
    big = np.arange(6, dtype=">f4")
    _, y = P.decode_request(P.encode_request(2, big), expected_shape=None)
    np.testing.assert_array_equal(big, y)


def test_encode_rejects_what_the_wire_cannot_carry():
    with pytest.raises(ValueError, match="complex64"):
        P.encode_request(1, np.zeros(2, np.complex64))
    for bad in (-1, 2**63, True, 1.0):
        with pytest.raises(P.ProtocolError):
            P.encode_request(bad, np.zeros(2, np.float32))


def test_decode_request_accepts_zmq_frame_like_objects_and_returns_a_view():
    class Frame:   # zmq.Frame exposes .buffer
        def __init__(self, data):
            self.buffer = memoryview(data)

    payload = bytearray(np.full(SHAPE, 3, np.float32).tobytes())
    id, x = P.decode_request([Frame(pack(good_header())), Frame(payload)], expected_shape=SHAPE)
    assert id == 5 and float(x.sum()) == 3 * x.size
    assert not x.flags.writeable or np.shares_memory(x, np.frombuffer(payload, np.uint8))


def test_expected_shape_wildcards_and_extra_keys():
    frames = request(good_header(priority=3, trace="abc", nested={"a": [1, 2]}))
    assert P.decode_request(frames, expected_shape=(None, 3, 4, 4))[0] == 5
    assert P.decode_request(frames, expected_shape=None)[0] == 5


def test_reply_round_trips():
    y = np.linspace(0, 1, 10, dtype=np.float32).reshape(1, 10)
    r = P.decode_reply(P.encode_reply_ok(4, y, epoch=3, latency_us=1500))
    assert (r.id, r.ok, r.epoch, r.latency_us, r.error_code) == (4, True, 3, 1500, None)
    np.testing.assert_array_equal(r.array, y)
    e = P.decode_reply(P.encode_reply_error(4, P.BUSY, "queue full"))
    assert (e.id, e.ok, e.array, e.error_code, e.error_message) == (4, False, None, "busy", "queue full")
    assert P.decode_reply(P.encode_reply_error(None, P.BAD_HEADER, "junk")).id is None


@pytest.mark.parametrize("frames", [
    [], [b"\xc1"], [pack([1, 2])], [pack({"id": 1})], [pack({"id": 1, "ok": False, "error": "x"})],
    [pack({"id": 1, "ok": True, "shape": [2], "dtype": "float32"})],
    [pack({"id": 1, "ok": True, "shape": [2], "dtype": "float32"}), b"\0" * 7],
    [pack({"id": -1, "ok": True}), b""], [b"", b"", b""],
])
def test_decode_reply_rejects_junk(frames):
    with pytest.raises(P.ProtocolError):
        P.decode_reply(frames)


# --- every malformed request → its code ------------------------------------------------------------
GOOD_PAYLOAD = np.zeros(SHAPE, np.float32).tobytes()
MALFORMED = [
    # (name, frames, expected code, expected id)
    ("no frames", [], "bad_frames", None),
    ("one frame", [pack(good_header())], "bad_frames", 5),
    ("three frames", [pack(good_header()), GOOD_PAYLOAD, b"x"], "bad_frames", 5),
    ("not a list", b"abc", "bad_frames", None),
    ("frame of wrong type", [pack(good_header()), 12], "bad_frames", None),
    ("non-contiguous frame", [pack(good_header()), memoryview(np.zeros(384, np.float32))[::2]], "bad_frames", None),
    ("not msgpack", [b"\xc1\xc1", GOOD_PAYLOAD], "bad_header", None),
    ("empty header", [b"", GOOD_PAYLOAD], "bad_header", None),
    ("truncated msgpack", [pack(good_header())[:-3], GOOD_PAYLOAD], "bad_header", None),
    ("trailing bytes", [pack(good_header()) + b"\x00", GOOD_PAYLOAD], "bad_header", None),
    ("random bytes", [bytes(range(256)), GOOD_PAYLOAD], "bad_header", None),
    ("list header", [pack([5, list(SHAPE), "float32"]), GOOD_PAYLOAD], "bad_header", None),
    ("int header", [pack(5), GOOD_PAYLOAD], "bad_header", None),
    ("int map keys", [pack({1: 5}), GOOD_PAYLOAD], "bad_header", None),
    ("ext type", [pack({"id": msgpack.ExtType(5, b"x")}), GOOD_PAYLOAD], "bad_header", None),
    ("timestamp", [pack({"id": msgpack.Timestamp(1)}), GOOD_PAYLOAD], "bad_header", None),
    ("no id", request({"shape": list(SHAPE), "dtype": "float32"}), "bad_header", None),
    ("id string", request(good_header(id="5")), "bad_header", None),
    ("id bool", request(good_header(id=True)), "bad_header", None),
    ("id float", request(good_header(id=5.0)), "bad_header", None),
    ("id nil", request(good_header(id=None)), "bad_header", None),
    ("id negative", request(good_header(id=-1)), "bad_header", None),
    ("id 2**63", request(good_header(id=2**63)), "bad_header", None),
    ("id 2**64-1", request(good_header(id=2**64 - 1)), "bad_header", None),
    ("no shape", request({"id": 5, "dtype": "float32"}), "bad_header", 5),
    ("no dtype", request({"id": 5, "shape": list(SHAPE)}), "bad_header", 5),
    ("bin keys", [pack({b"id": 5, b"shape": [1], b"dtype": "float32"}), b"\0" * 4], "bad_header", None),
    ("long string", request(good_header(dtype="f" * 5000)), "bad_header", None),
    ("shape string", request(good_header(shape="1,3,4,4")), "bad_shape", 5),
    ("shape floats", request(good_header(shape=[1.0, 3, 4, 4])), "bad_shape", 5),
    ("shape bools", request(good_header(shape=[True, 3, 4, 4])), "bad_shape", 5),
    ("shape map", request(good_header(shape={"a": 1})), "bad_shape", 5),
    ("shape negative", request(good_header(shape=[1, -3, 4, 4])), "bad_shape", 5),
    ("rank 9", request(good_header(shape=[1] * 9)), "bad_shape", 5),
    ("rank 2000", request(good_header(shape=[1] * 2000)), "bad_shape", 5),
    ("wrong shape", request(good_header(shape=[1, 3, 4, 5]), b"\0" * 240), "bad_shape", 5),
    ("wrong rank", request(good_header(shape=[3, 4, 4]), b"\0" * 192), "bad_shape", 5),
    ("huge dim", request(good_header(shape=[1, 3, 2**40, 4])), "too_large", 5),
    ("huge product", request(good_header(shape=[4096, 4096, 4096])), "too_large", 5),
    ("int64 max dims", request(good_header(shape=[2**63 - 1] * 8)), "too_large", 5),
    ("dtype unknown", request(good_header(dtype="complex64")), "bad_dtype", 5),
    ("dtype numpy code", request(good_header(dtype="<f4")), "bad_dtype", 5),
    ("dtype int", request(good_header(dtype=32)), "bad_dtype", 5),
    ("dtype not the model's", request(good_header(dtype="float64"), b"\0" * 384), "bad_dtype", 5),
    ("payload truncated", request(good_header(), GOOD_PAYLOAD[:-1]), "bad_payload", 5),
    ("payload empty", request(good_header(), b""), "bad_payload", 5),
    ("payload oversize", request(good_header(), GOOD_PAYLOAD + b"\0" * 4), "bad_payload", 5),
]


@pytest.mark.parametrize("name,frames,code,id", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_request_gets_its_code(name, frames, code, id):
    assert code_of(frames, expected_shape=SHAPE) == (code, id)


def test_size_limits_are_configurable():
    small = P.Limits(max_message_bytes=100, max_elements=50, max_header_bytes=40)
    assert code_of(request(good_header()), expected_shape=SHAPE, limits=small) == ("too_large", 5)
    assert code_of([pack(good_header(pad="x" * 40)), b""], limits=small)[0] == "too_large"
    ok = request(good_header(shape=[10]), b"\0" * 40)
    assert P.decode_request(ok, expected_shape=None, limits=small)[1].shape == (10,)
    assert code_of(request(good_header(shape=[60]), b"\0" * 240), expected_shape=None,
                   limits=P.Limits(max_elements=50)) == ("too_large", 5)
    with pytest.raises(ValueError, match="max_rank"):
        P.Limits(max_rank=0)


def test_error_reply_of_a_malformed_request_echoes_its_id():
    err = pytest.raises(P.ProtocolError, P.decode_request, request(good_header(id=77, dtype="x"))).value
    reply = P.decode_reply(P.encode_reply_error(err.id, err.code, err.message))
    assert (reply.id, reply.error_code) == (77, "bad_dtype")


def test_fuzz_decode_request_raises_only_protocol_errors():
    rng = random.Random(20240601)
    good = [pack(good_header()), GOOD_PAYLOAD]
    atoms = [0, 1, -1, 5, 2**31, 2**63 - 1, 2**64 - 1, -(2**63), 1.5, float("nan"), True, None, "", "id",
             "float32", "shape", "dtype", b"\x00", [], {}]

    def value(depth=0):
        roll = rng.random()
        if depth > 3 or roll < 0.5:
            return rng.choice(atoms)
        if roll < 0.75:
            return [value(depth + 1) for _ in range(rng.randrange(0, 10))]
        return {rng.choice(["id", "shape", "dtype", "x"]): value(depth + 1) for _ in range(rng.randrange(0, 5))}

    decoded = 0
    for _ in range(4000):
        kind = rng.randrange(5)
        if kind == 0:      # random bytes in random frame counts
            frames = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
                      for _ in range(rng.randrange(0, 4))]
        elif kind == 1:    # a good request with bytes flipped or cut
            header = bytearray(good[0])
            for _ in range(rng.randrange(1, 4)):
                header[rng.randrange(len(header))] = rng.getrandbits(8)
            frames = [bytes(header[: rng.randrange(len(header) + 1)]), good[1][: rng.randrange(len(good[1]) + 1)]]
        elif kind == 2:    # random structures as headers
            frames = [pack(value()), bytes(rng.randrange(0, 200))]
        elif kind == 3:    # well-formed maps with random values
            header = {"id": rng.choice(atoms), "shape": value(), "dtype": rng.choice(atoms + ["float64", "uint8"])}
            frames = [pack(header), bytes(rng.randrange(0, 200))]
        else:              # right keys, random shapes and payload sizes
            shape = [rng.choice([0, 1, 2, 3, 4, -1, 2**32]) for _ in range(rng.randrange(0, 10))]
            frames = [pack({"id": rng.randrange(2**63), "shape": shape, "dtype": "float32"}),
                      bytes(4 * rng.randrange(0, 40))]
        try:
            P.decode_request(frames, expected_shape=None, limits=P.Limits(max_elements=1000))
            decoded += 1
        except P.ProtocolError as err:
            assert err.code in P.REQUEST_ERRORS
    assert decoded > 0     # the generator does produce valid requests now and then


# --- control --------------------------------------------------------------------------------------
def test_control_round_trip_and_hello():
    req = P.decode_control_request([P.encode_control_request("pin", id=3, config="0-9@big:4")])
    assert (req.cmd, req.args, req.id, req.version) == ("pin", {"config": "0-9@big:4"}, 3, 1)
    reply = P.decode_control_reply(P.encode_control_ok(P.hello_result(), id=3))
    assert reply == {"ok": True, "id": 3, "protocol": 1, "daemon": "tunerd", "version": P.hello_result()["version"]}
    err = P.decode_control_reply(P.encode_control_error(P.BAD_CONFIG, "no such cluster", id=3))
    assert err["error"] == {"code": "bad_config", "message": "no such cluster"} and err["ok"] is False


def test_control_version_rules():
    assert P.decode_control_request(P.encode_control_request("hello", version=99)).cmd == "hello"
    with pytest.raises(P.ProtocolError) as info:
        P.decode_control_request(P.encode_control_request("status", version=2, id=4))
    assert (info.value.code, info.value.id) == ("version_mismatch", 4)
    with pytest.raises(P.ProtocolError, match="unknown_command"):
        P.decode_control_request(P.encode_control_request("reboot"))
    assert P.decode_control_request(P.encode_control_request("reboot"), commands=["reboot"]).cmd == "reboot"


@pytest.mark.parametrize("data,code", [
    (b"\xc1", "bad_header"), (pack([1]), "bad_header"), (pack({"v": 1}), "bad_header"),
    (pack({"v": 1, "cmd": 5}), "bad_header"), (pack({"v": 1, "cmd": "status", "id": "x"}), "bad_header"),
    ([b"a", b"b"], "bad_frames"), (pack({"cmd": "status"}), "version_mismatch"),
])
def test_malformed_control_requests(data, code):
    with pytest.raises(P.ProtocolError) as info:
        P.decode_control_request(data)
    assert info.value.code == code


@pytest.mark.parametrize("data", [b"\xc1", pack([1]), pack({"ok": 1}), pack({"ok": False}),
                                  pack({"ok": False, "error": {"message": "x"}}), [b"", b""]])
def test_malformed_control_replies(data):
    with pytest.raises(P.ProtocolError):
        P.decode_control_reply(data)


def test_error_codes_are_grouped_and_documented():
    assert P.error_kind("busy") == "retry" and P.error_kind("bad_shape") == "request"
    assert P.error_kind("worker_failed") == "server" and P.error_kind("bad_config") == "control"
    assert P.error_kind("from_the_future") == "unknown"
    assert len(set(P.ERROR_CODES)) == len(P.ERROR_CODES) == 14
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    for code in P.ERROR_CODES + P.CONTROL_COMMANDS:
        assert f"`{code}`" in doc, code


def test_documented_example_bytes_match_the_encoder():
    doc = (pathlib.Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    header, payload = P.encode_request(7, np.array([[1.0, 2.0]], np.float32))
    assert header == pack({"id": 7, "shape": [1, 2], "dtype": "float32"})
    assert bytes(payload).hex(" ") == "00 00 80 3f 00 00 00 40"
    assert "00 00 80 3f  00 00 00 40" in doc and f"frame 0 ({len(header)} bytes)" in doc
