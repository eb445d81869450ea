"""The daemon's control socket: one request, one reply; the commands; the status it reports.

Commands (docs/protocol.md): hello, status, retune, pin, unpin, history. Each reply echoes the
request's id; a ProtocolError or TunerdError a command raises is answered as a control error.
"""
from __future__ import annotations

import logging
import os

import zmq

from ..errors import TunerdError
from ..pipeconfig import parse_config, validate
from ..version import __version__
from ..wire import protocol
from .sockets import readable

log = logging.getLogger("tunerd")

HISTORY_FPS = 60        # evaluations shown in status' sparkline data
HISTORY_LIMIT = 1000    # evaluations a `history` without a limit returns (the last ones)


class ControlMixin:
    """The Daemon's control methods. They read what the daemon holds (``cfg``, ``tuner``, ``live``,
    ``pipeline``, ``monitor``, ``platform``, ``model``, its counters and ``events``), and pin, unpin
    and retune through its tuner, its live tuning and its ``_retune``."""

    def _read_control(self) -> None:
        for _ in range(32):
            if not readable(self.control):
                return
            try:
                msg = self.control.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, frames = msg[0], msg[1:]
            req_id = None
            try:
                req = protocol.decode_control_request(frames)
                req_id = req.id
                reply = protocol.encode_control_ok(self._command(req.cmd, req.args), id=req_id)
            except protocol.ProtocolError as err:
                # NOTE: errors raised by a command carry no id of their own: the request's is echoed
                reply = protocol.encode_control_error(err.code, err.message,
                                                      id=err.id if err.id is not None else req_id)
            except TunerdError as err:
                reply = protocol.encode_control_error(protocol.BAD_CONFIG, str(err), id=req_id)
            try:
                self.control.send_multipart([identity, reply], flags=zmq.NOBLOCK)
            except zmq.ZMQError as err:
                log.debug("control reply dropped: %s", err)

    def _command(self, cmd: str, args: dict) -> dict:
        if cmd == protocol.HELLO:
            return {"protocol": protocol.PROTOCOL_VERSION, "daemon": protocol.DAEMON_NAME, "version": __version__}
        if cmd == protocol.STATUS:
            return self.status()
        if cmd == protocol.RETUNE:
            self._retune("operator request")
            return {"state": self.tuner.state, "retunes": self.tuner.retunes}
        if cmd == protocol.PIN:
            text = args.get("config")
            if not isinstance(text, str):
                raise protocol.ProtocolError(protocol.BAD_ARGUMENT, "pin needs a 'config' string")
            config = validate(parse_config(text), len(self.model.units), self.platform.clusters)
            self.tuner.pin(config)
            self.live.step()
            return {"state": self.tuner.state, "config": str(config)}
        if cmd == protocol.UNPIN:
            self.tuner.unpin()
            return {"state": self.tuner.state}
        if cmd == protocol.HISTORY:
            limit = args.get("limit", HISTORY_LIMIT)
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
                raise protocol.ProtocolError(protocol.BAD_ARGUMENT, "history's 'limit' must be an int >= 0")
            history = self.tuner.history
            return {"history": history[max(0, len(history) - limit):], "retunes": list(self.retune_log),
                    "gain": self.tuner.gain()}
        raise protocol.ProtocolError(protocol.UNKNOWN_COMMAND, f"unknown command {cmd!r}")

    def status(self, stats: dict | None = None) -> dict:
        t = self.tuner.status()
        stats = stats if stats is not None else self.pipeline.stats()
        speeds, freqs = self.monitor.speed_factors(), self.monitor.frequencies()   # sysfs reads: once
        return {
            "state": t["state"], "config": str(self.pipeline.config), "best": t["best"],
            "evaluating": self.live.evaluating, "pinned": self.tuner.pinned,
            "evaluations": t["evaluations"], "generation": t["generation"], "retunes": t["retunes"],
            "frames_served": self.frames_served, "frames_failed": self.frames_failed,
            "replies_dropped": self.replies_dropped, "queue": self._admission.queued, "clients": self._admission.clients, "in_flight": self.pipeline.pending,
            "fps": stats["fps"], "latency_ms": stats["latency_ms"], "epoch": stats["epoch"],
            "bottleneck": stats["bottleneck"], "restarts": stats["restarts"],
            "host_cpus": list(self.pipeline.host_placement) or None,
            "history_fps": [h["fps"] for h in self.tuner.history[-HISTORY_FPS:]],
            "platform": self._platform_now(speeds, freqs),
            "speeds": speeds, "frequencies": freqs,
            "model": {"name": self.model.name, "source": self.model.source, "hash": self.model.hash,
                      "units": len(self.model.units)},
            "input_shape": list(self.model.input_shape), "uptime_s": self.clock() - self.started_at,
            "events": list(self.events), "version": __version__,
            "backend": getattr(getattr(self, "backend", None), "name", None),
            # NOTE: while a candidate not yet measured runs, the incumbent's gain (it says which)
            "gain": self.tuner.gain(self.pipeline.config) or self.tuner.gain(),
            "metrics": getattr(self.metrics_server, "address", None),
        }

    def metrics_snapshot(self) -> dict:
        """The numbers a Prometheus scrape turns into metrics (tunerd.daemon.metrics.families):
        copied in the poll loop, so the scrape's thread reads nothing the loop changes."""
        stats = self.pipeline.stats()       # once: status and the stage figures both read it
        s = self.status(stats)
        best, gain = s["best"] or {}, s["gain"] or {}
        return {"version": __version__, "model": self.model.name, "backend": s["backend"],
                "platform_source": self.platform.source, "frames_served": self.frames_served,
                "errors_by_code": dict(self.errors_by_code), "replies_dropped": self.replies_dropped,
                "latency": self.latency.snapshot(), "fps": s["fps"], "best_fps": best.get("fps"),
                "gain_ratio": gain.get("ratio"), "state": s["state"], "evaluations": s["evaluations"],
                "retunes": s["retunes"], "epoch": s["epoch"], "restarts": s["restarts"],
                "stages": stats["stages"], "clusters": s["platform"]["clusters"],
                "queue": s["queue"], "in_flight": s["in_flight"], "queue_depth": self.cfg.queue_depth,
                "pid": os.getpid(), "worker_pids": self.pipeline.worker_pids(), "uptime_s": s["uptime_s"]}

    def _platform_now(self, speeds: dict, freqs: dict) -> dict:
        """The platform map with each cluster's speed, current frequency and frequency cap
        (``cap_khz``, scaling_max_freq) as the monitor read them now (``speeds``, ``freqs``); the
        platform itself holds those of start-up. ``max_khz`` stays the hardware maximum."""
        out = {**self.platform.to_dict(), "spec": self.cfg.spec}
        for c in out["clusters"]:
            now = freqs.get(c["name"], {})
            c["speed"] = speeds.get(c["name"], c["speed"])
            c["cur_khz"] = now.get("cur_khz") or c["cur_khz"]
            c["cap_khz"] = now.get("max_khz") or c["max_khz"]
        return out
