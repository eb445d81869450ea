"""The daemon: one poll loop serving frames, control requests, the pipeline, the tuner and the monitor.

The main process does I/O and decisions only; the stage workers compute. One ``tick`` reads what
the sockets and the pipeline have, answers what is answerable, advances the live tuning and
samples the monitor. The clock is injectable and ``tick`` can be called from a test.

Frames: ROUTER (ROUTER_MANDATORY, MAXMSGSIZE) -> validate -> bounded admission queue -> pipeline ->
reply. Every request gets exactly one reply, and each client's replies leave in its send order (an
error for a later request waits for the earlier requests' results).
"""
from __future__ import annotations

import errno
import logging
import os
import signal
import socket
import stat
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import zmq

from ..version import __version__
from ..wire import protocol
from ..tuning import states
from .config import DaemonConfig
from ..errors import ConfigError, TunerdError
from .live import LiveTuning, WindowPolicy
from .monitor import Monitor, MonitorConfig
from ..pipeconfig import ClusterSpec, parse_config, validate
from .sdnotify import Notifier, watchdog_interval
from .state import StateStore, platform_signature

log = logging.getLogger("tunerd")

DRAIN_S = 10.0          # SIGTERM: how long frames in flight get to finish
REPLY_STALL_S = 3.0     # a client whose replies cannot leave (SNDHWM reached) for this long is not reading
MAX_HELD_REPLIES = 4096  # ... nor is one with this many requests waiting for their replies to leave
HISTORY_FPS = 60        # evaluations shown in status' sparkline data
HISTORY_LIMIT = 1000    # evaluations a `history` without a limit returns (the last ones)
PLACEMENT_INTERVAL_S = 1.0  # how often the daemon re-decides where its own threads run (Pipeline.place_host)


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


def _readable(sock: zmq.Socket) -> bool:
    """A message is waiting. Asked before each recv: most ticks find nothing on one of the two
    sockets, and asking costs a third of a recv that fails with zmq.Again (profiled)."""
    return bool(sock.getsockopt(zmq.EVENTS) & zmq.POLLIN)


@dataclass
class _Request:
    identity: bytes
    client_id: int | None
    t_recv: float
    reply: list | None = None


class Daemon:
    def __init__(self, cfg: DaemonConfig, *, clock: Callable[[], float] = time.monotonic,
                 notifier: Notifier | None = None, hints_provider: Callable | None = None,
                 config_path: str | None = None, overrides: dict | None = None):
        self.cfg = cfg
        self.config_path = config_path    # re-read on SIGHUP
        self.overrides = dict(overrides or {})   # the command line's settings: they win over the file again
        self.clock = clock
        self.notify = notifier or Notifier.from_env()
        self._watchdog_s = watchdog_interval()
        self._hints_provider = hints_provider
        self.started_at = clock()
        self._stop = False
        self._reload = False
        self._admitting = True
        self._seq = 0
        self._requests: dict[int, _Request] = {}
        self._order: dict[bytes, deque[int]] = {}
        self._queue: deque[tuple[int, np.ndarray]] = deque()
        self.frames_served = 0
        self.frames_failed = 0
        self.replies_dropped = 0
        self._held: dict[bytes, float] = {}    # client -> since when its replies cannot leave (pipe full)
        self.events: deque[dict] = deque(maxlen=20)
        self._last_monitor = 0.0
        self._last_watchdog = 0.0
        self._last_status = 0.0
        self._last_placement = 0.0
        self._ctx: zmq.Context | None = None
        self.pipeline = None

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        from ..model.loader import load_model
        from ..pipeline.executor import Pipeline
        from ..platform.spec import resolve_platform
        from ..tuning.tuner import Tuner

        cfg = self.cfg
        self._check_single_instance()
        log.info("tunerd %s starting: model %s, platform %s", __version__, cfg.source, cfg.spec)
        self.model = load_model(cfg.source, input_size=cfg.input_size)
        log.info("model %s: %d units, input %s", self.model.name, len(self.model.units), list(self.model.input_shape))
        self.platform = resolve_platform(cfg.spec, sysfs_root=cfg.sysfs_root)
        if self.platform.source == "board":
            raise ConfigError(f"platform {cfg.spec!r} is simulated; `tunerd serve` needs real cores "
                              "(use `tunerd simulate` for boards)")
        log.info("platform (%s): %s", self.platform.source, self.platform.describe())
        self.monitor = Monitor(self.platform, cfg.sysfs_root,
                               MonitorConfig(debounce_s=max(1.0, 2 * cfg.poll_interval_s),
                                             drift_drop=cfg.drift_threshold), clock=self.clock)
        self._nominal = {c.name: c.speed for c in self.platform.clusters}
        table = self._hints()
        # NOTE: the hints already price each cluster at its speed when they were made, so the tuner
        # sees speed 1.0 and later only the change relative to that (see retune).
        clusters = [ClusterSpec(c.name, c.core_type, c.cores, 1.0) for c in self.platform.clusters]
        self.tuner = Tuner(clusters, table, rng_seed=cfg.seed, budget=cfg.budget,
                           population_size=cfg.population, clock=time.time)
        self.store = StateStore(cfg.state_dir)
        self.platform_sig = platform_signature(self.platform)
        initial = self._initial_config()
        self.pipeline = Pipeline(self.model, initial, self.platform, sysfs_root=cfg.sysfs_root,
                                 max_inflight=cfg.max_in_flight)
        self.live = LiveTuning(self.tuner, self.pipeline, clock=self.clock,
                               policy=WindowPolicy(max_frames=cfg.window_frames,
                                                   min_seconds=cfg.window_min_seconds),
                               on_converged=self._on_converged)
        if cfg.pin:
            self.tuner.pin(parse_config(cfg.pin))
        self._bind()
        self.notify.ready(f"serving {self.model.name}; tuner {self.tuner.state}")
        log.info("ready: frames on %s, control on %s", cfg.frames, cfg.control)

    def _hints(self):
        if self._hints_provider is not None:
            return self._hints_provider(self.model, self.platform)
        from ..costs.hints import hints_for_platform
        return hints_for_platform(self.model, self.platform, cache_dir=Path(self.cfg.state_dir) / "hints",
                                  sysfs_root=self.cfg.sysfs_root).to_table()

    def _initial_config(self) -> str:
        stored = self.store.load_tuned(self.model.hash, self.platform_sig, self.monitor.freq_state())
        if stored:
            try:
                config = validate(parse_config(stored["config"]), len(self.model.units), self.platform.clusters)
                log.info("starting from the stored best %s (%.2f fps); verifying it", config, stored["fps"])
                self.tuner.adopt(config, float(stored["fps"]))
                return str(config)
            except TunerdError as err:
                log.warning("ignoring stored config %r: %s", stored.get("config"), err)
        biggest = max(self.platform.clusters, key=lambda c: (c.speed, c.cores))
        return f"0-{len(self.model.units) - 1}@{biggest.name}:{biggest.cores}"

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

    # ------------------------------------------------------------------ the loop
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, self._on_term)
        signal.signal(signal.SIGHUP, self._on_hup)
        try:
            while not self._stop:
                self.tick(0.05)
                if self._reload:
                    self._reload = False
                    self.reload()
            self.shutdown()
        except BaseException:
            self.close()
            raise
        return 0

    def _on_term(self, signum, frame) -> None:   # handlers only set flags
        self._stop = True

    def _on_hup(self, signum, frame) -> None:
        self._reload = True

    def tick(self, timeout: float = 0.05) -> None:
        poller = zmq.Poller()
        poller.register(self.frames, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        for h in self.pipeline.handles():
            poller.register(h, zmq.POLLIN)
        busy = bool(self._queue) or self.pipeline.pending or bool(self._held)
        poller.poll(int(1000 * (min(timeout, 0.01) if busy else timeout)))
        self._read_frames()
        self._read_control()
        self._retry_held()
        # NOTE: poll first: it hears the workers' releases and outputs, so the one _feed after it
        # finds every slot there is (a _feed before it too cost a poll of every worker per tick)
        outcomes = self.pipeline.poll(0)
        self.live.on_outcomes(outcomes)
        for o in outcomes:
            self._answer_outcome(o)
        self._feed()
        if self.tuner.state != states.IDLE:
            self.live.step()
        self._housekeeping()

    # ------------------------------------------------------------------ frames
    def _read_frames(self, budget: int = 256) -> None:
        expected = list(self.model.input_shape)
        limits = protocol.Limits(max_message_bytes=self.cfg.max_message_bytes)
        for _ in range(budget):
            if not _readable(self.frames):
                return
            try:
                msg = self.frames.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            identity = msg[0].bytes
            seq = self._new_request(identity, None)
            try:
                cid, array = protocol.decode_request(msg[1:], expected_shape=expected, limits=limits)
            except protocol.ProtocolError as err:
                self._requests[seq].client_id = err.id
                self._reply_error(seq, err.code, err.message)
                continue
            self._requests[seq].client_id = cid
            if not self._admitting:
                self._reply_error(seq, protocol.SHUTTING_DOWN, "tunerd is shutting down")
            elif len(self._queue) + self.pipeline.pending >= self.cfg.queue_depth:
                self._reply_error(seq, protocol.BUSY, f"admission queue full ({self.cfg.queue_depth} frames)")
            else:
                self._queue.append((seq, array))
                if self.tuner.state == states.IDLE and not self.tuner.pinned:
                    self.live.step()       # first frame: the search starts

    def _new_request(self, identity: bytes, client_id) -> int:
        self._seq += 1
        self._requests[self._seq] = _Request(identity, client_id, self.clock())
        self._order.setdefault(identity, deque()).append(self._seq)
        return self._seq

    def _feed(self) -> None:
        while self._queue:
            seq, array = self._queue[0]
            try:
                accepted = self.pipeline.submit(seq, array)
            except TunerdError as err:
                self._queue.popleft()
                self._reply_error(seq, protocol.INTERNAL, str(err))
                continue
            if not accepted:
                return
            self._queue.popleft()

    def _answer_outcome(self, o) -> None:
        req = self._requests.get(o.frame_id)
        if req is None:
            return
        if o.ok:
            self.frames_served += 1
            latency_us = int(1e6 * (self.clock() - req.t_recv))
            req.reply = protocol.encode_reply_ok(req.client_id, o.output, o.epoch, latency_us)
            self._flush(req.identity)
        else:
            self.frames_failed += 1
            self._reply_error(o.frame_id, protocol.WORKER_FAILED, o.error or "the frame failed")

    def _reply_error(self, seq: int, code: str, message: str) -> None:
        req = self._requests[seq]
        req.reply = protocol.encode_reply_error(req.client_id, code, message)
        self._flush(req.identity)

    def _flush(self, identity: bytes) -> None:
        """Send this client's replies that are ready, in its send order.

        EAGAIN (its pipe holds SNDHWM replies) keeps the rest for a later tick: a burst of replies
        fills the pipe faster than the I/O thread drains it even when the client reads. A client whose
        replies cannot leave for REPLY_STALL_S, or with MAX_HELD_REPLIES requests waiting, does not
        read: its ready replies are dropped. EHOSTUNREACH: the client is gone, its replies dropped.
        """
        order = self._order.get(identity)
        while order and self._requests[order[0]].reply is not None:
            req = self._requests[order[0]]
            try:
                self.frames.send_multipart([identity, *req.reply], flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                now = self.clock()
                since = self._held.setdefault(identity, now)
                if now - since < REPLY_STALL_S and len(order) <= MAX_HELD_REPLIES:
                    return                       # try again on a later tick
                self.replies_dropped += 1
                log.debug("reply to a client dropped: it has not read for %.1f s", now - since)
            except zmq.ZMQError as err:
                self.replies_dropped += 1
                log.debug("reply to a client dropped: %s", err)
            else:
                self._held.pop(identity, None)
            del self._requests[order.popleft()]
        if order is not None and not order:
            del self._order[identity]
            self._held.pop(identity, None)

    def _retry_held(self) -> None:
        for identity in list(self._held):
            self._flush(identity)

    # ------------------------------------------------------------------ control
    def _read_control(self) -> None:
        for _ in range(32):
            if not _readable(self.control):
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
            return {"history": history[max(0, len(history) - limit):]}
        raise protocol.ProtocolError(protocol.UNKNOWN_COMMAND, f"unknown command {cmd!r}")

    def status(self) -> dict:
        t = self.tuner.status()
        stats = self.pipeline.stats()
        speeds, freqs = self.monitor.speed_factors(), self.monitor.frequencies()   # sysfs reads: once
        return {
            "state": t["state"], "config": str(self.pipeline.config), "best": t["best"],
            "evaluating": self.live.evaluating, "pinned": self.tuner.pinned,
            "evaluations": t["evaluations"], "generation": t["generation"], "retunes": t["retunes"],
            "frames_served": self.frames_served, "frames_failed": self.frames_failed,
            "replies_dropped": self.replies_dropped, "queue": len(self._queue), "in_flight": self.pipeline.pending,
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
        }

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

    # ------------------------------------------------------------------ tuning events
    def _relative_speeds(self) -> dict[str, float]:
        return {name: s / self._nominal[name] for name, s in self.monitor.speed_factors().items()}

    def _retune(self, reason: str) -> None:
        log.info("retuning: %s", reason)
        self.live.retune(self._relative_speeds())
        if self.tuner.state == states.PINNED:
            # NOTE: the tuner keeps the retune (at the new speeds) for unpin; adopting a stored
            # best now would end the pin
            log.info("pinned: the retune starts on unpin")
            return
        stored = self.store.load_tuned(self.model.hash, self.platform_sig, self.monitor.freq_state())
        if stored:
            try:
                config = validate(parse_config(stored["config"]), len(self.model.units), self.platform.clusters)
                log.info("known frequency state: verifying the stored best %s", config)
                self.tuner.adopt(config, float(stored["fps"]))
            except TunerdError as err:
                log.warning("ignoring stored config: %s", err)

    def _on_converged(self, config, fps: float) -> None:
        log.info("converged: %s at %.2f fps after %d evaluations", config, fps, self.tuner.evaluations)
        self.monitor.set_converged(fps)
        freq_state = self.monitor.freq_state()
        try:
            self.store.save_tuned(self.model.hash, self.platform_sig, freq_state,
                                  config=str(config), fps=float(fps),
                                  extra={"evaluations": self.tuner.evaluations, "saved_at": time.time()})
        except OSError as err:
            # NOTE: persistence is best-effort: a full or read-only disk must not stop the serving
            log.error("cannot save the tuned config to %s: %s",
                      self.store.tuned_path(self.model.hash, self.platform_sig, freq_state), err)

    def _capacity_fps(self) -> float | None:
        """What the running config sustains now, by the stages' own recent compute times: the same
        measure as the tuner's fitness, and independent of how fast clients send."""
        periods = [st["period_ms"] for st in self.pipeline.stats()["stages"]]
        if not periods or any(p is None or p <= 0 for p in periods):
            return None
        return 1000.0 / max(periods)

    def _housekeeping(self) -> None:
        now = self.clock()
        if now - self._last_monitor >= self.cfg.poll_interval_s:
            self._last_monitor = now
            fps = self._capacity_fps() if self.tuner.state == states.CONVERGED else None
            events = self.monitor.sample(fps=fps)
            for e in events:
                log.info("monitor: %s %s: %s", e.kind, e.source, e.detail)
                self.events.append(e.to_dict())
            if events:
                self._retune("; ".join(f"{e.source}: {e.detail}" for e in events))
        interval = self._watchdog_s
        if interval and now - self._last_watchdog >= interval:
            self._last_watchdog = now
            self.notify.watchdog()
        if self.cfg.place_self and now - self._last_placement >= PLACEMENT_INTERVAL_S:
            self._last_placement = now
            # NOTE: measured (bench_serve, emulated 1+1 pipeline on 2 cores): left to the scheduler,
            # the daemon and its clients take their ~25% of a core from whichever stage is there, and
            # on the bottleneck's core served throughput fell to 0.84 of in-process
            self.pipeline.place_host()
        if now - self._last_status >= 2.0:
            self._last_status = now
            best = self.tuner.best
            self.notify.status(f"{self.tuner.state}; serving {self.pipeline.config}"
                               + (f"; best {best[1]:.1f} fps" if best else ""))

    def reload(self) -> None:
        from .config import load_config
        try:
            fresh = load_config(self.config_path, self.overrides, required=False) if self.config_path else None
        except TunerdError as err:
            log.error("reload failed, keeping the running config: %s", err)
            return
        if fresh is not None:
            self.cfg.log_level = fresh.log_level
            self.cfg.queue_depth = fresh.queue_depth
            self.cfg.max_message_bytes = fresh.max_message_bytes
            self.frames.setsockopt(zmq.MAXMSGSIZE, fresh.max_message_bytes)
            logging.getLogger().setLevel(fresh.log_level.upper())
        log.info("configuration reloaded")

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop admitting, let frames in flight finish, answer the rest with an error, persist, exit."""
        self.notify.stopping()
        log.info("stopping: %d frames in flight, %d queued", self.pipeline.pending, len(self._queue))
        self._admitting = False
        while self._queue:
            seq, _ = self._queue.popleft()
            self._reply_error(seq, protocol.SHUTTING_DOWN, "tunerd is shutting down")
        deadline = self.clock() + DRAIN_S
        while (self.pipeline.pending or self._held) and self.clock() < deadline:
            self._read_frames()
            for o in self.pipeline.poll(0.05 if self.pipeline.pending else 0):
                self._answer_outcome(o)
            self._retry_held()
            if self._held and not self.pipeline.pending:
                time.sleep(0.01)
        best = self.tuner.best
        if best and self.tuner.state == states.CONVERGED:
            self._on_converged(best[0], best[1])
        self.close()
        log.info("stopped")

    def close(self) -> None:
        if self.pipeline is not None:
            for o in self.pipeline.poll(0):
                self._answer_outcome(o)
            self.pipeline.close()
            for o in self.pipeline.poll(0):
                self._answer_outcome(o)
        for seq in list(self._requests):
            if self._requests.get(seq) is not None and self._requests[seq].reply is None:
                self._reply_error(seq, protocol.SHUTTING_DOWN, "tunerd stopped before the frame finished")
        if self._ctx is not None:
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
