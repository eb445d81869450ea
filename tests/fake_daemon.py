"""A tiny stand-in for tunerd's two sockets, so client, tunerctl and loadgen tests run without it.

    with FakeDaemon() as d:            # binds OS-chosen loopback ports (or pass ipc:// addresses)
        Client(d.frames_address).infer(x)   # -> transform(x), x * 2 by default
        ControlClient(d.control_address).call("status")

It speaks the real protocol (tunerd.wire.protocol) in a thread polling both ROUTER sockets with a short
timeout, so stop() returns promptly. Knobs for tests: ``hold`` (answer frames in reverse order in
batches of that many), ``answer_frames=False`` (never answer), ``error_for(id, array) -> code|None``,
``protocol_version`` (pretend to be another version), ``status_updates`` (applied one per status call),
``curve_secret_key`` (CURVE server on both sockets, any client key accepted).
"""
from __future__ import annotations

import copy
import threading
import time
from typing import Any, Callable

import numpy as np
import zmq

from tunerd.wire import protocol

STATUS: dict[str, Any] = {
    "state": "tuning",
    "model": {"name": "squeezenet", "source": "zoo:squeezenet", "hash": "0123abcd", "units": 18},
    "input_shape": [1, 3, 8, 8],
    "input_dtype": "float32",
    "platform": {   # the shape tunerd.platform.clusters.Platform.to_dict() gives
        "source": "emulate",
        "spec": "emulate:big=0@1.0,little=1@0.4",
        "clusters": [
            {"name": "big", "cpus": [0], "core_type": "emulated", "capacity": 1024, "min_khz": 500000,
             "cur_khz": 2000000, "max_khz": 2000000, "speed": 1.0},
            {"name": "little", "cpus": [1], "core_type": "emulated", "capacity": 410, "min_khz": 500000,
             "cur_khz": 2000000, "max_khz": 2000000, "speed": 0.4},
        ],
        "thermal": [{"name": "thermal_zone0", "type": "cpu-thermal", "temp_c": 47.5, "trips": []}],
    },
    "config": "0-9@big:1 | 10-17@little:1",
    "fps": 41.5,
    "epoch": 7,
    "best": {"config": "0-11@big:1 | 12-17@little:1", "fps": 44.0},
    "generation": 3,
    "evaluations": 24,
    "frames_served": 1234,
    "host_cpus": [0],
    "retunes": 1,
    "pinned": False,
    "history_fps": [12.0, 20.5, 18.0, 30.0, 35.5, 41.5, 44.0, 43.0],
    "uptime_s": 3723.4,
    "version": "0.1.0-fake",
}

HISTORY = [
    {"index": i, "time": 1_700_000_000.0 + 10 * i, "state": "tuning", "config": f"0-{i + 5}@big:1 | {i + 6}-17@little:1",
     "fps": fps, "generation": i // 4, "epoch": i + 1}
    for i, fps in enumerate(STATUS["history_fps"])
]


class FakeDaemon:
    def __init__(self, *, frames: str = "tcp://127.0.0.1:*", control: str = "tcp://127.0.0.1:*",
                 input_shape: tuple | None = (1, 3, 8, 8), transform: Callable[[np.ndarray], np.ndarray] = lambda x: x * 2,
                 hold: int = 1, answer_frames: bool = True,
                 error_for: Callable[[int, np.ndarray], str | None] | None = None,
                 protocol_version: int = protocol.PROTOCOL_VERSION, status: dict | None = None,
                 status_updates: list[dict] | None = None, limits: protocol.Limits = protocol.DEFAULT_LIMITS,
                 curve_secret_key: bytes | None = None):
        self.input_shape = input_shape
        self.transform = transform
        self.hold = hold
        self.answer_frames = answer_frames
        self.error_for = error_for
        self.protocol_version = protocol_version
        self.status = copy.deepcopy(status if status is not None else STATUS)
        self.status_updates = list(status_updates or [])
        self.history = copy.deepcopy(HISTORY)
        self.limits = limits
        self.frames_seen = 0
        self.commands: list[str] = []
        self.curve_secret_key = curve_secret_key   # CURVE server (any client key) when set
        self._ctx = zmq.Context()
        self._frames = self._router(frames)
        self._control = self._router(control)
        self.frames_address = self._frames.getsockopt_string(zmq.LAST_ENDPOINT)
        self.control_address = self._control.getsockopt_string(zmq.LAST_ENDPOINT)
        self._held: list[list] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-tunerd", daemon=True)
        self.error: BaseException | None = None

    def _router(self, address: str) -> zmq.Socket:
        sock = self._ctx.socket(zmq.ROUTER)
        sock.linger = 0
        if self.curve_secret_key is not None:
            sock.curve_server = True
            sock.curve_secretkey = self.curve_secret_key
        sock.bind(address)
        return sock

    def __enter__(self) -> "FakeDaemon":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        self._frames.close(linger=0)
        self._control.close(linger=0)
        self._ctx.term()
        if self.error is not None:
            raise AssertionError("the fake daemon's thread failed") from self.error

    # --- loop -----------------------------------------------------------------------------------
    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._frames, zmq.POLLIN)
        poller.register(self._control, zmq.POLLIN)
        try:
            while not self._stop.is_set():
                for sock, _ in poller.poll(20):
                    if sock is self._frames:
                        self._on_frames(self._frames.recv_multipart(copy=False))
                    else:
                        self._on_control(self._control.recv_multipart())
        except BaseException as err:  # noqa: BLE001 - reported by stop() in the test's thread
            self.error = err

    def _on_frames(self, msg: list) -> None:
        identity, frames = msg[0], msg[1:]
        self.frames_seen += 1
        if not self.answer_frames:
            return
        start = time.perf_counter()
        try:
            id, x = protocol.decode_request(frames, expected_shape=self.input_shape, limits=self.limits)
        except protocol.ProtocolError as err:
            self._frames.send_multipart([identity, *protocol.encode_reply_error(err.id, err.code, err.message)])
            return
        code = self.error_for(id, x) if self.error_for else None
        if code:
            reply = protocol.encode_reply_error(id, code, f"fake {code}")
        else:
            latency = int((time.perf_counter() - start) * 1e6)
            reply = protocol.encode_reply_ok(id, self.transform(x), self.status.get("epoch", 0), latency)
        self._held.append([identity, *reply])
        if len(self._held) >= self.hold:
            for out in reversed(self._held):
                self._frames.send_multipart(out, copy=False)
            self._held.clear()

    def _on_control(self, msg: list) -> None:
        identity, frames = msg[0], msg[1:]
        try:
            req = protocol.decode_control_request(frames)
            self.commands.append(req.cmd)
            if req.cmd != protocol.HELLO and self.protocol_version != protocol.PROTOCOL_VERSION:
                raise protocol.ProtocolError(protocol.VERSION_MISMATCH,
                                             f"fake daemon speaks protocol {self.protocol_version}", req.id)
            reply = protocol.encode_control_ok(self._command(req), id=req.id)
        except protocol.ProtocolError as err:
            reply = protocol.encode_control_error(err.code, err.message, id=err.id)
        self._control.send_multipart([identity, reply])

    def _command(self, req: protocol.ControlRequest) -> dict:
        if req.cmd == protocol.HELLO:
            return {**protocol.hello_result("0.1.0-fake"), "protocol": self.protocol_version}
        if req.cmd == protocol.STATUS:
            if self.status_updates:
                self.status.update(self.status_updates.pop(0))
            return self.status
        if req.cmd == protocol.RETUNE:
            self.status.update(state="retuning", retunes=self.status["retunes"] + 1)
            return {"state": "retuning"}
        if req.cmd == protocol.PIN:
            config = req.args.get("config")
            if not isinstance(config, str):
                raise protocol.ProtocolError(protocol.BAD_ARGUMENT, "pin needs a string 'config'", req.id)
            if "@" not in config:
                raise protocol.ProtocolError(protocol.BAD_CONFIG, f"cannot parse config {config!r}", req.id)
            self.status.update(state="pinned", pinned=True, config=config)
            return {"state": "pinned", "config": config, "epoch": self.status["epoch"] + 1}
        if req.cmd == protocol.UNPIN:
            self.status.update(state="tuning", pinned=False)
            return {"state": "tuning"}
        if req.cmd == protocol.HISTORY:
            history = self.history[-req.args["limit"]:] if isinstance(req.args.get("limit"), int) else self.history
            return {"history": history}
        raise protocol.ProtocolError(protocol.UNKNOWN_COMMAND, req.cmd, req.id)
