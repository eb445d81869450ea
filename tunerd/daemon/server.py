"""The daemon: one poll loop serving frames, control requests, the pipeline, the tuner and the monitor.

The main process does I/O and decisions only; the stage workers compute. One ``tick`` reads what
the sockets and the pipeline have, answers what is answerable, advances the live tuning and
samples the monitor. The clock is injectable and ``tick`` can be called from a test.

Frames: ROUTER (ROUTER_MANDATORY, MAXMSGSIZE) -> validate -> per-client admission queues, taken in
turns (tunerd.daemon.admission) -> pipeline -> reply. Every request gets exactly one reply, and each
client's replies leave in its send order (an error for a later request waits for the earlier
requests' results).

The frames path is in tunerd.daemon.frames, binding and closing the two sockets in
tunerd.daemon.sockets, the control commands and the status in tunerd.daemon.control: mixins of
Daemon, since they read and set the daemon's own state.
"""
from __future__ import annotations

import logging
import signal
import time
from collections import deque
from pathlib import Path
from typing import Callable

import zmq

from ..version import __version__
from ..wire import protocol
from ..tuning import states
from .config import DaemonConfig
from ..errors import ConfigError, TunerdError
from .admission import Admission
from .live import LiveTuning, WindowPolicy
from .metrics import LatencyHistogram, SnapshotExchange
from .monitor import Monitor, MonitorConfig
from ..platform.clusters import core_type_speeds
from ..pipeconfig import ClusterSpec, parse_config, validate
from .sdnotify import Notifier, watchdog_interval
from .sockets import SocketsMixin
from .control import ControlMixin
from .frames import ACTIVE_CLIENT_S, REPLY_STALL_S, FramesMixin, Request  # noqa: F401 (REPLY_STALL_S: tests)
from .state import StateStore, platform_signature

log = logging.getLogger("tunerd")

DRAIN_S = 10.0          # SIGTERM: how long frames in flight get to finish
PLACEMENT_INTERVAL_S = 1.0  # how often the daemon re-decides where its own threads run (Pipeline.place_host)
RETUNES_KEPT = 100      # retunes (when, after which evaluation, why) the history reply carries


class Daemon(FramesMixin, SocketsMixin, ControlMixin):
    """The resident service. Its socket and control methods come from the mixins (see the module
    docstring): they stay methods because tests and the loop call them on the daemon, and they
    share its state as every method here does, which functions taking the daemon would only hide."""

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
        self._requests: dict[int, Request] = {}
        self._order: dict[bytes, deque[int]] = {}
        self._admission = Admission(cfg.queue_depth, cfg.max_client_frames)   # per-client queues
        self._seen: dict[bytes, float] = {}      # client -> when it last sent a frame (the last ACTIVE_CLIENT_S)
        self._last_seen_prune = 0.0
        self._answered_at: deque[float] = deque(maxlen=32)   # when the last frames were answered: the drain rate
        self.frames_served = 0
        self.frames_failed = 0
        self.replies_dropped = 0
        self.errors_by_code: dict[str, int] = {}      # frames answered with an error, by code
        self.latency = LatencyHistogram()              # served frames, receive to reply
        self.retune_log: deque[dict] = deque(maxlen=RETUNES_KEPT)
        self.metrics_exchange: SnapshotExchange | None = None
        self.metrics_server = None
        self._held: dict[bytes, float] = {}    # client -> since when its replies cannot leave (pipe full)
        self.events: deque[dict] = deque(maxlen=20)
        self._last_monitor = 0.0
        self._last_watchdog = 0.0
        self._last_status = 0.0
        self._last_placement = 0.0
        self._ctx: zmq.Context | None = None
        self.pipeline = None
        self._poll_set: tuple | None = None     # (the pipeline's handles, a Poller of them and the sockets)
        self._fill: tuple | None = None         # (config, its fill limit with several clients)
        self._limits = protocol.Limits(max_message_bytes=cfg.max_message_bytes)
        self._expected_shape: list | None = None

    # ------------------------------------------------------------------ start-up
    def start(self) -> None:
        from ..backends import resolve
        from ..model.loader import load_model
        from ..pipeline.executor import Pipeline
        from ..platform.spec import resolve_platform
        from ..tuning.tuner import Tuner

        cfg = self.cfg
        self._check_single_instance()
        log.info("tunerd %s starting: model %s, platform %s", __version__, cfg.source, cfg.spec)
        self.backend, why = resolve(cfg.backend)
        log.info("%s", why)
        self.model = load_model(cfg.source, input_size=cfg.input_size)
        self.backend.check(self.model)      # numpy refuses a model with nodes only onnxruntime runs
        log.info("model %s: %d units, input %s", self.model.name, len(self.model.units), list(self.model.input_shape))
        self._expected_shape = list(self.model.input_shape)
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
        # sees speed 1.0 and later only the change relative to that (see retune); a cluster of a
        # core type at a lower clock than its fastest cluster (a phone's gold beside its prime)
        # shares that one's costs at its clock ratio (core_type_speeds)
        clock = core_type_speeds(self.platform)
        clusters = [ClusterSpec(c.name, c.core_type, c.cores, clock[c.name]) for c in self.platform.clusters]
        self.tuner = Tuner(clusters, table, rng_seed=cfg.seed, budget=cfg.budget,
                           population_size=cfg.population, clock=time.time)
        self.store = StateStore(cfg.state_dir)
        # NOTE: tuned results are per backend (their best configs differ); numpy keeps the old key
        # so state files written before backends existed still apply
        self.platform_sig = platform_signature(self.platform) + (
            "" if self.backend.name == "numpy" else f"|backend={self.backend.name}")
        initial = self._initial_config()
        self.pipeline = Pipeline(self.model, initial, self.platform, sysfs_root=cfg.sysfs_root,
                                 max_inflight=cfg.max_in_flight, backend=self.backend.name)
        self.live = LiveTuning(self.tuner, self.pipeline, clock=self.clock,
                               policy=WindowPolicy(max_frames=cfg.window_frames,
                                                   min_seconds=cfg.window_min_seconds),
                               on_converged=self._on_converged)
        if cfg.pin:
            self.tuner.pin(parse_config(cfg.pin))
        self._bind()
        if cfg.metrics_listen:
            from .metrics import MetricsServer
            self.metrics_exchange = SnapshotExchange(self.clock)
            self.metrics_server = MetricsServer(cfg.metrics_listen, self.metrics_exchange)
            log.info("metrics on %s", self.metrics_server.address)
        self.notify.ready(f"serving {self.model.name}; tuner {self.tuner.state}")
        log.info("ready: frames on %s, control on %s", cfg.frames, cfg.control)

    def _hints(self):
        if self._hints_provider is not None:
            return self._hints_provider(self.model, self.platform)
        from ..costs.hints import hints_for_platform
        return hints_for_platform(self.model, self.platform, cache_dir=Path(self.cfg.state_dir) / "hints",
                                  sysfs_root=self.cfg.sysfs_root, backend=self.backend.name).to_table()

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

    def _poller(self) -> zmq.Poller:
        """The sockets and the pipeline's handles, registered once; again when the handles change
        (an epoch's workers, a restart). NOTE: profiled: a Poller built each tick was a tenth of
        the daemon's CPU per frame (three ticks a frame, six registrations each)."""
        handles = tuple(self.pipeline.handles())
        if self._poll_set is None or self._poll_set[0] != handles:
            poller = zmq.Poller()
            for sock in (self.frames, self.control, *handles):
                poller.register(sock, zmq.POLLIN)
            self._poll_set = (handles, poller)
        return self._poll_set[1]

    def tick(self, timeout: float = 0.05) -> None:
        busy = bool(self._admission.queued) or self.pipeline.pending or bool(self._held)
        ready = dict(self._poller().poll(int(1000 * (min(timeout, 0.01) if busy else timeout))))
        if self.frames in ready:
            self._read_frames()
        if self.control in ready:
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

    # ------------------------------------------------------------------ tuning events
    def _relative_speeds(self) -> dict[str, float]:
        return {name: s / self._nominal[name] for name, s in self.monitor.speed_factors().items()}

    def _retune(self, reason: str) -> None:
        log.info("retuning: %s", reason)
        self.retune_log.append({"time": time.time(), "after_evaluation": self.tuner.evaluations, "reason": reason})
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
        if now - self._last_seen_prune >= ACTIVE_CLIENT_S:
            self._last_seen_prune = now
            self._seen = {c: t for c, t in self._seen.items() if now - t < ACTIVE_CLIENT_S}
        if self.metrics_exchange is not None and self.metrics_exchange.wanted:
            t0 = time.perf_counter()
            snapshot = self.metrics_snapshot()
            snapshot["snapshot_s"] = time.perf_counter() - t0       # what a scrape costs this loop
            self.metrics_exchange.publish(snapshot)                 # a scrape waits for it
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
            self.cfg.queue_depth = self._admission.queue_depth = fresh.queue_depth
            self.cfg.max_client_frames = self._admission.client_cap = fresh.max_client_frames
            self.cfg.max_message_bytes = fresh.max_message_bytes
            self._limits = protocol.Limits(max_message_bytes=fresh.max_message_bytes)
            self._fill = None
            self.frames.setsockopt(zmq.MAXMSGSIZE, fresh.max_message_bytes)
            logging.getLogger().setLevel(fresh.log_level.upper())
        log.info("configuration reloaded")

    # ------------------------------------------------------------------ shutdown
    def shutdown(self) -> None:
        """Stop admitting, let frames in flight finish, answer the rest with an error, persist, exit."""
        self.notify.stopping()
        log.info("stopping: %d frames in flight, %d queued", self.pipeline.pending, self._admission.queued)
        self._admitting = False
        for _, seq in self._admission.drain():
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
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        self._close_sockets()
