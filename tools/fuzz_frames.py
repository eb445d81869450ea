#!/usr/bin/env python3
"""Hostile input against a real daemon: malformed requests mixed with valid ones.

    tools/fuzz_frames.py --count 12000 --json           # starts its own daemon (emulated, ipc, temp dir)
    tools/fuzz_frames.py --frames ipc://... --control ipc://... --count 2000 --max-message-bytes N

Each case is one request on one of several DEALER sockets: random bytes, wrong frame counts,
msgpack of wrong types, huge/negative/high-rank shapes, dtype mismatches, truncated or oversize
payloads, oversize headers and messages, ext types, deep nesting; about one in eight is a valid
frame whose output is compared with Model.run. The daemon answers each client in its send order, so
the n-th reply on a socket belongs to its n-th request: every request must get exactly one reply,
valid ones the right output, malformed ones an error of the expected code. Two kinds of input never
get a reply, by design of the transport: a single frame over MAXMSGSIZE (libzmq closes the
connection; counted by the socket monitor's disconnect event) and raw bytes that are not ZMTP on
the ipc socket (the handshake fails). The daemon must stay up and its memory (PSS of the daemon and
its workers) must not grow beyond noise. Exit status 0 when all holds, 1 otherwise.

Its own daemon gets ``[limits] max_message_bytes`` of 1 MiB (--max-message-bytes) so oversize cases
stay cheap; pass the running daemon's value with --frames.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import msgpack
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MODEL, SIZE, DaemonProcess, footprint, log, print_report  # noqa: E402

import tunerd  # noqa: E402
from tunerd.wire import protocol  # noqa: E402

ANY_REQUEST_ERROR = "request-error"   # random junk: any error of kind "request" will do
NO_REPLY = "no-reply"                 # refused by the transport
MEMORY_NOISE_BYTES = 12 * 2**20       # PSS growth tolerated (allocator and zmq buffers settling)
MEMORY_NOISE_FRACTION = 0.10


@dataclass
class Case:
    kind: str
    frames: list
    expect: str            # "ok", an error code, ANY_REQUEST_ERROR or NO_REPLY
    id: int | None = None  # the id the reply must carry (None: not checked)
    ref: int | None = None  # index of the reference input (valid cases)


class Generator:
    """Cases for a model input shape, a message limit and a seed."""

    def __init__(self, shape: tuple[int, ...], max_message_bytes: int, seed: int, n_refs: int = 8):
        self.shape = tuple(shape)
        self.limit = max_message_bytes
        self.rng = random.Random(seed)
        nrng = np.random.default_rng(seed)
        self.inputs = [nrng.standard_normal(self.shape).astype(np.float32) for _ in range(n_refs)]
        self.payloads = [x.tobytes() for x in self.inputs]
        self.nbytes = len(self.payloads[0])
        self._id = 0
        self.kinds = [   # (weight, method)
            (14, self.valid), (8, self.random_bytes), (6, self.frame_count), (10, self.header_not_map),
            (12, self.bad_id), (6, self.missing_keys), (10, self.shape_wrong_type), (8, self.huge_shape),
            (6, self.negative_shape), (5, self.high_rank), (6, self.wrong_shape), (8, self.dtype_mismatch),
            (6, self.dtype_wrong_type), (10, self.truncated), (5, self.oversize_payload), (3, self.long_string),
            (3, self.ext_type), (3, self.deep_nesting), (2, self.big_header), (1, self.message_over_limit),
            (1, self.frame_over_maxmsgsize),
        ]
        self._weights = [w for w, _ in self.kinds]

    def next_id(self) -> int:
        self._id += 1
        return self._id

    def case(self) -> Case:
        return self.rng.choices(self.kinds, self._weights)[0][1]()

    def _header(self, **over) -> tuple[int, bytes]:
        id = over.pop("id", None)
        id = self.next_id() if id is None else id
        h = {"id": id, "shape": list(self.shape), "dtype": "float32", **over}
        return id, msgpack.packb(h, use_bin_type=True)

    def _junk(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    # valid
    def valid(self) -> Case:
        i = self.rng.randrange(len(self.inputs))
        id, h = self._header()
        return Case("valid", [h, self.payloads[i]], "ok", id, i)

    # malformed
    def random_bytes(self) -> Case:
        frames = [self._junk(self.rng.choice([1, 2, 7, 40, 300, 5000])), self._junk(self.rng.randrange(0, 200))]
        return Case("random_bytes", frames, ANY_REQUEST_ERROR)

    def frame_count(self) -> Case:
        id, h = self._header()
        n = self.rng.choice([1, 3, 4, 9, 30])
        frames = [h] + [self.rng.choice([b"", self.payloads[0], self._junk(16)]) for _ in range(n - 1)]
        return Case("frame_count", frames, protocol.BAD_FRAMES, id)

    def header_not_map(self) -> Case:
        obj = self.rng.choice([[1, [1, 3, SIZE, SIZE], "float32"], 7, -3, "id", None, True, 1.5, b"\x00" * 8,
                               [], {1: 2}])
        try:
            h = msgpack.packb(obj, use_bin_type=True)
        except TypeError:
            h = b"\x80"
        # NOTE: a map with a non-str key is refused by strict_map_key (bad msgpack): bad_header too
        return Case("header_not_map", [h, self.payloads[0]], protocol.BAD_HEADER)

    def bad_id(self) -> Case:
        value = self.rng.choice(["7", 1.0, True, False, -1, -(2**63), 2**63, 2**64 - 1, None, [1], {"a": 1},
                                 b"\x01"])
        h = msgpack.packb({"id": value, "shape": list(self.shape), "dtype": "float32"}, use_bin_type=True)
        return Case("bad_id", [h, self.payloads[0]], protocol.BAD_HEADER)

    def missing_keys(self) -> Case:
        id = self.next_id()
        full = {"id": id, "shape": list(self.shape), "dtype": "float32"}
        drop = self.rng.choice([["shape"], ["dtype"], ["shape", "dtype"], ["id"]])
        h = msgpack.packb({k: v for k, v in full.items() if k not in drop}, use_bin_type=True)
        return Case("missing_keys", [h, self.payloads[0]], protocol.BAD_HEADER, None if "id" in drop else id)

    def shape_wrong_type(self) -> Case:
        value = self.rng.choice(["1,3,32,32", 3, None, {"0": 1}, [1.0, 3.0, 32.0, 32.0], [1, 3, "32", 32],
                                 [[1, 3], [32, 32]], [True, 3, 32, 32], 1.5, b"\x01\x03"])
        id, h = self._header(shape=value)
        return Case("shape_wrong_type", [h, self.payloads[0]], protocol.BAD_SHAPE, id)

    def huge_shape(self) -> Case:
        value = self.rng.choice([[2**40, 2**40], [1, 3, 2**31, 2**31], [2**64 - 1], [1, 3, 65536, 65536],
                                 [4097, 4097], [2**63 - 1, 0]])
        id, h = self._header(shape=value)
        # NOTE: a zero dimension makes the element count 0, but a single dimension over the limit is
        # refused first (a shape check must not depend on another dimension's value)
        return Case("huge_shape", [h, self._junk(self.rng.randrange(64))], protocol.TOO_LARGE, id)

    def negative_shape(self) -> Case:
        value = self.rng.choice([[-1, 3, SIZE, SIZE], [1, 3, -SIZE, SIZE], [-(2**63)], [1, -1, -1, -1]])
        id, h = self._header(shape=value)
        return Case("negative_shape", [h, self.payloads[0]], protocol.BAD_SHAPE, id)

    def high_rank(self) -> Case:
        rank = self.rng.choice([9, 10, 16, 64, 1000])
        id, h = self._header(shape=[1] * rank)
        return Case("high_rank", [h, self._junk(4)], protocol.BAD_SHAPE, id)

    def wrong_shape(self) -> Case:
        value = list(self.shape)
        choice = self.rng.randrange(3)
        if choice == 0:
            value[self.rng.randrange(len(value))] += self.rng.choice([-1, 1, 5])
        elif choice == 1:
            value = value[:-1]
        else:
            value = value + [1]
        value = [max(0, d) for d in value]
        id, h = self._header(shape=value)
        n = int(np.prod(value)) * 4
        return Case("wrong_shape", [h, b"\0" * n], protocol.BAD_SHAPE, id)

    def dtype_mismatch(self) -> Case:
        name = self.rng.choice([n for n in protocol.DTYPES if n != "float32"])
        n = int(np.prod(self.shape)) * protocol.DTYPES[name].itemsize
        id, h = self._header(dtype=name)
        return Case("dtype_mismatch", [h, self._junk(n)], protocol.BAD_DTYPE, id)

    def dtype_wrong_type(self) -> Case:
        value = self.rng.choice([32, None, ["float32"], "float", "<f4", "FLOAT32", "complex64", "object", "O", "",
                                 "float32\x00", b"float32"])
        id, h = self._header(dtype=value)
        return Case("dtype_wrong_type", [h, self.payloads[0]], protocol.BAD_DTYPE, id)

    def truncated(self) -> Case:
        id, h = self._header()
        cut = self.rng.choice([0, 1, 3, self.nbytes // 2, self.nbytes - 1, self.nbytes - 4])
        return Case("truncated", [h, self.payloads[0][:cut]], protocol.BAD_PAYLOAD, id)

    def oversize_payload(self) -> Case:
        id, h = self._header()
        extra = self.rng.choice([1, 4, 4096, self.nbytes])
        return Case("oversize_payload", [h, self.payloads[0] + b"\0" * extra], protocol.BAD_PAYLOAD, id)

    def long_string(self) -> Case:
        id, h = self._header(note="x" * self.rng.choice([4097, 20000]))
        return Case("long_string", [h, self.payloads[0]], protocol.BAD_HEADER)

    def ext_type(self) -> Case:
        id = self.next_id()
        # a user ext type, or a timestamp (type -1, which msgpack would decode to a datetime)
        ext = self.rng.choice([msgpack.ExtType(1, b"\x00" * 8), msgpack.ExtType(5, b"\x01"), msgpack.Timestamp(1, 2)])
        h = msgpack.packb({"id": id, "shape": list(self.shape), "dtype": "float32", "x": ext}, use_bin_type=True)
        return Case("ext_type", [h, self.payloads[0]], protocol.BAD_HEADER)

    def deep_nesting(self) -> Case:
        depth = self.rng.choice([1000, 5000, 20000])
        # a header that is an array nested `depth` deep, then the usual map (never reached)
        h = b"\x91" * depth + b"\xc0"
        return Case("deep_nesting", [h, self.payloads[0]], protocol.BAD_HEADER)

    def big_header(self) -> Case:
        _, h = self._header(pad=b"\0" * (protocol.MAX_HEADER_BYTES + self.rng.randrange(1, 1000)))
        return Case("big_header", [h, self.payloads[0]], protocol.TOO_LARGE)   # (id not read: not echoed)

    def message_over_limit(self) -> Case:
        """Every frame within MAXMSGSIZE, their sum over max_message_bytes: too_large from the daemon."""
        id, h = self._header()
        return Case("message_over_limit", [h, b"\0" * self.limit], protocol.TOO_LARGE, id)

    def frame_over_maxmsgsize(self) -> Case:
        id, h = self._header()
        return Case("frame_over_maxmsgsize", [h, b"\0" * (self.limit + 1 + self.rng.randrange(4096))], NO_REPLY, id)


def _check_reply(case: Case, frames: list, refs: list[np.ndarray], tally: Counter, failures: list) -> None:
    try:
        reply = protocol.decode_reply(frames)
    except protocol.ProtocolError as err:
        failures.append(f"{case.kind}: undecodable reply ({err})")
        return
    if case.id is not None and reply.id != case.id:
        failures.append(f"{case.kind}: reply id {reply.id} for request id {case.id}")
        return
    if case.expect == "ok":
        if not reply.ok:
            failures.append(f"valid request {case.id} got {reply.error_code}: {reply.error_message}")
        elif not np.allclose(reply.array, refs[case.ref], rtol=0, atol=1e-6):
            failures.append(f"valid request {case.id}: output differs from Model.run "
                            f"(max {np.abs(reply.array - refs[case.ref]).max():.3g})")
        else:
            tally["valid_ok"] += 1
        return
    if reply.ok:
        failures.append(f"{case.kind}: a malformed request was answered ok")
    elif case.expect == ANY_REQUEST_ERROR and protocol.error_kind(reply.error_code) != "request":
        failures.append(f"{case.kind}: error {reply.error_code} is not of kind request")
    elif case.expect not in (ANY_REQUEST_ERROR, reply.error_code):
        failures.append(f"{case.kind}: expected {case.expect}, got {reply.error_code} ({reply.error_message})")
    else:
        tally[f"error:{reply.error_code}"] += 1


def _transport_refusal(ctx: zmq.Context, address: str, case: Case, wait_s: float = 2.0) -> str | None:
    """Send a frame over MAXMSGSIZE on a fresh socket: the connection must be dropped, no reply."""
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED)
    try:
        sock.connect(address)
        sock.send_multipart(case.frames)
        deadline = time.monotonic() + wait_s
        disconnected = False
        while time.monotonic() < deadline and not disconnected:
            if monitor.poll(50):
                disconnected = recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        if sock.poll(100):
            return f"{case.kind}: got a reply to a frame over MAXMSGSIZE"
        if not disconnected:
            return f"{case.kind}: the connection was not dropped within {wait_s:g} s"
        return None
    finally:
        sock.disable_monitor()
        monitor.close(0)
        sock.close(0)


def _raw_garbage(address: str, rng: random.Random) -> None:
    """Bytes that are not ZMTP on the ipc socket itself: the handshake must fail without harm."""
    if not address.startswith("ipc://"):
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2.0)
    try:
        s.connect(address[len("ipc://"):])
        for _ in range(rng.randrange(1, 4)):
            s.sendall(rng.randbytes(rng.choice([1, 10, 64, 1000])))
        try:
            s.recv(64)    # libzmq's greeting, then it hangs up on the junk
        except (socket.timeout, OSError):
            pass
    except OSError:
        pass   # it hung up first: fine
    finally:
        s.close()


def fuzz(frames_address: str, control_address: str | None, daemon_pid: int | None, *, count: int,
         max_message_bytes: int, seed: int = 0, sockets: int = 4, window: int = 48, garbage: int = 0,
         model: str = MODEL, size: int = SIZE, log=print) -> dict:
    """Run ``count`` cases (+ ``garbage`` raw non-ZMTP connections); a report with ``ok``."""
    ref_model = tunerd.load_model(model, input_size=size, backend="numpy")
    gen = Generator(ref_model.input_shape, max_message_bytes, seed)
    refs = [ref_model.run(x) for x in gen.inputs]
    ctx = zmq.Context()
    socks = []
    for _ in range(sockets):
        s = ctx.socket(zmq.DEALER)
        s.linger = 0
        s.rcvtimeo = 60_000
        s.connect(frames_address)
        socks.append(s)
    tally, kinds, failures = Counter(), Counter(), []
    rng = random.Random(seed + 1)
    samples = []
    t0 = time.monotonic()
    before = footprint(daemon_pid) if daemon_pid else None
    rss_series: list[tuple[int, int | None]] = []     # (requests done, the daemon process's own RSS)
    warm = None
    done = 0
    try:
        while done < count:
            batch: list[list[Case]] = [[] for _ in socks]
            for i, s in enumerate(socks):
                while len(batch[i]) < window and done < count:
                    case = gen.case()
                    kinds[case.kind] += 1
                    done += 1
                    if case.expect == NO_REPLY:
                        error = _transport_refusal(ctx, frames_address, case)
                        if error:
                            failures.append(error)
                        else:
                            tally["transport_refused"] += 1
                        continue
                    s.send_multipart(case.frames, copy=len(case.frames[-1]) < 65536)
                    batch[i].append(case)
            for i, s in enumerate(socks):
                for case in batch[i]:
                    try:
                        frames = s.recv_multipart()
                    except zmq.Again:
                        failures.append(f"{case.kind}: no reply within 60 s")
                        raise RuntimeError("the daemon stopped answering") from None
                    _check_reply(case, frames, refs, tally, failures)
            for _ in range(garbage * done // count - tally["raw_garbage"]):
                _raw_garbage(frames_address, rng)
                tally["raw_garbage"] += 1
            if daemon_pid and warm is None and done >= min(count // 5, 2000):
                warm = footprint(daemon_pid)    # the baseline: after the first requests set up buffers
            if daemon_pid and (len(samples) < done * 20 // count):
                samples.append(footprint(daemon_pid).pss_bytes)
                rss_series.append((done, _rss(daemon_pid)))
            if done % 2000 < sockets * window:
                log(f"fuzz: {done}/{count} requests, {len(failures)} failures, {time.monotonic() - t0:.0f} s")
    except RuntimeError as err:
        failures.append(str(err))
    finally:
        for s in socks:
            s.close(0)
        ctx.term()
    elapsed = time.monotonic() - t0
    report = {
        "requests": done, "malformed": done - kinds["valid"], "valid": kinds["valid"],
        "valid_ok": tally["valid_ok"], "error_replies": sum(v for k, v in tally.items() if k.startswith("error:")),
        "transport_refused": tally["transport_refused"], "raw_garbage_connections": tally["raw_garbage"],
        "kinds": dict(sorted(kinds.items())),
        "errors_by_code": {k[6:]: v for k, v in sorted(tally.items()) if k.startswith("error:")},
        "seconds": round(elapsed, 1), "failures": failures[:50], "failure_count": len(failures),
    }
    if daemon_pid:
        after = footprint(daemon_pid)
        base = warm or before
        growth = after.pss_bytes - base.pss_bytes
        report["memory"] = {"before": before.to_dict(), "baseline": base.to_dict(), "after": after.to_dict(),
                            "pss_growth_mib": round(growth / 2**20, 2),
                            "pss_max_mib": round(max(samples + [after.pss_bytes]) / 2**20, 2)}
        rss_series.append((done, _rss(daemon_pid)))
        report["daemon_rss_mib"] = [(n, round(b / 2**20, 2)) for n, b in rss_series if b]
        report["daemon_rss_growth_second_half_pct"] = _second_half_growth(rss_series)
        if growth > max(MEMORY_NOISE_BYTES, MEMORY_NOISE_FRACTION * base.pss_bytes):
            failures.append(f"PSS grew by {growth / 2**20:.1f} MiB")
            report["failure_count"] += 1
        report["daemon_alive"] = _alive(daemon_pid)
        if not report["daemon_alive"]:
            failures.append("the daemon died")
            report["failure_count"] += 1
        report["failures"] = failures[:50]
    if control_address:
        from tunerd.wire.client import ControlClient
        with ControlClient(control_address, timeout=10) as ctl:
            st = ctl.call("status")
        report["daemon_status"] = {k: st[k] for k in ("frames_served", "frames_failed", "replies_dropped", "queue",
                                                      "restarts")}
    report["ok"] = report["failure_count"] == 0 and report["valid_ok"] == report["valid"]
    return report


def _rss(pid: int) -> int | None:
    try:
        import psutil
        return psutil.Process(pid).memory_info().rss
    except Exception:          # gone, or not readable: no sample
        return None


def _second_half_growth(series: list[tuple[int, int | None]]) -> float | None:
    """RSS growth from the sample nearest the run's middle to the last one, in percent."""
    points = [(n, b) for n, b in series if b]
    if len(points) < 3:
        return None
    middle = min(points, key=lambda p: abs(p[0] - points[-1][0] / 2))
    return round(100 * (points[-1][1] - middle[1]) / middle[1], 2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--count", type=int, default=12000, help="requests in all (default 12000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sockets", type=int, default=4, help="client sockets, each with a window of requests")
    ap.add_argument("--garbage", type=int, default=200, help="raw non-ZMTP connections to the ipc socket")
    ap.add_argument("--max-message-bytes", type=int, default=2**20,
                    help="the daemon's [limits] max_message_bytes (own daemon: set to this)")
    ap.add_argument("--frames", help="a running daemon's frames address (default: start one)")
    ap.add_argument("--control", help="its control address")
    ap.add_argument("--pid", type=int, help="its pid (for memory figures)")
    ap.add_argument("--workdir", help="where its own daemon keeps sockets, state and log (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    if args.frames:
        report = fuzz(args.frames, args.control, args.pid, count=args.count, max_message_bytes=args.max_message_bytes,
                      seed=args.seed, sockets=args.sockets, garbage=args.garbage, log=log)
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tunerd-fuzz-"))
        config = f"[limits]\nmax_message_bytes = {args.max_message_bytes}\n"
        with DaemonProcess(workdir, name="fuzz", config_text=config) as d:
            report = fuzz(d.frames, d.control, d.pid, count=args.count, max_message_bytes=args.max_message_bytes,
                          seed=args.seed, sockets=args.sockets, garbage=args.garbage, log=log)
            report["daemon_exit"] = d.stop()
        report["ok"] = report["ok"] and report["daemon_exit"] == 0
    return print_report(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
