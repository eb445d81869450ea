#!/usr/bin/env python3
"""Soak: many clients at saturation for a long time against a real daemon; nothing may leak or stall.

    tools/soak.py --duration 60 --clients 16 --json          # starts its own daemon (emulated, ipc)
    tools/soak.py --frames ipc://... --control ipc://... --pid PID --duration 600

Each client is a DEALER thread keeping ``--in-flight`` frames outstanding (closed loop; 16 x 4 keeps
the admission queue of 64 full, i.e. the pipeline saturated). Every reply is matched to its request
by id: each request must get exactly one reply and each output must equal Model.run. Every
``--interval`` seconds it samples throughput, client round-trip latency, the daemon's queue and
frames in flight (status), and the footprint of the daemon and its workers: PSS, file descriptors,
memfd rings, /dev/shm entries. It passes when throughput holds (the median fps of the last third
of the intervals is at least ``--min-hold`` of the first third's), the queue never exceeds
queue_depth, PSS grows no more than noise, and descriptors and shared memory are the same at the end
as after the warm-up. Each sample also splits the machine's CPU time (in cores) between the daemon
with its workers, the clients (this process) and everything else: a throughput drop that comes with
a rise of ``cpu_other`` by 0.25 core or more is reported as a warning (another job took the cores),
not as a failure.

Faults (``--kill-worker-every S``): every S seconds, once frames have flowed since the last
restart, a random stage worker gets SIGKILL; the pipeline restarts its workers and re-runs the frames
that were inside, so still every request gets exactly one reply, ok. ``--daemon-kills N`` then
kills the daemon itself (SIGKILL, under light load, at a random moment) N times: the ipc socket files
it leaves must not stop the restart, its workers must exit, the stored state must read back whole and
the restarted daemon must answer correctly. ``--state-kills N`` kills a process rewriting a tuned-state
record N times mid-write (tunerd.daemon.state's atomic writes): every read-back must be a whole record.

Its own daemon is pinned to one config (``--pin``, default a two-stage pipeline over both clusters)
so that the figures measure serving, not the tuner's search; ``--pin none`` lets it tune (it then
warms up until converged, at most ``--warmup`` s).
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MODEL, SIZE, DaemonProcess, crash_state_writes, footprint, gone, percentile, tree, is_stage_worker, log, print_report  # noqa: E402,E501

import tunerd  # noqa: E402
from tunerd.wire import protocol  # noqa: E402
from tunerd.wire.client import ControlClient  # noqa: E402

DEFAULT_PIN = "0-8@big:1 | 9-17@little:1"
PSS_NOISE_BYTES = 12 * 2**20
OTHER_LOAD_CORES = 0.25      # a rise in other processes' CPU (cores) that explains a throughput drop
PSS_NOISE_FRACTION = 0.10


class Books:
    """What every client thread records, under one lock (cheap next to a frame's compute)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: Counter = Counter()
        self.bad_output = 0
        self.unexpected = 0           # a reply to no request in flight: a duplicate or a stray
        self.latencies: list[tuple[float, float]] = []   # (time done, round trip ms)
        self.sent = 0


def client_loop(address: str, inputs: list[np.ndarray], refs: list[np.ndarray], in_flight: int,
                stop: threading.Event, books: Books, seed: int, failures: list) -> None:
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    rng = np.random.default_rng(seed)
    pending: dict[int, tuple[float, int]] = {}     # id -> (sent at, reference index)
    next_id = 1
    try:
        while not stop.is_set() or pending:
            while not stop.is_set() and len(pending) < in_flight:
                i = int(rng.integers(len(inputs)))
                sock.send_multipart(protocol.encode_request(next_id, inputs[i]), copy=False)
                pending[next_id] = (time.monotonic(), i)
                next_id += 1
                with books.lock:
                    books.sent += 1
            if not sock.poll(60_000):
                failures.append(f"client {seed}: no reply within 60 s ({len(pending)} in flight)")
                return
            reply = protocol.decode_reply(sock.recv_multipart(copy=False))
            now = time.monotonic()
            entry = pending.pop(reply.id, None)
            with books.lock:
                if entry is None:
                    books.unexpected += 1
                elif not reply.ok:
                    books.errors[reply.error_code] += 1
                else:
                    books.ok += 1
                    books.latencies.append((now, 1000 * (now - entry[0])))
                    if not np.allclose(reply.array, refs[entry[1]], rtol=0, atol=1e-6):
                        books.bad_output += 1
    finally:
        sock.close(0)


class CpuMeter:
    """Where the machine's CPU time went between two calls, in cores: the daemon and its workers,
    this process (the clients), everything else. On a shared machine "other" explains a drop in
    throughput that is not the daemon's doing."""

    def __init__(self, pid: int | None):
        self.pid = pid
        self.last = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        with open("/proc/stat") as f:
            fields = [float(v) for v in f.readline().split()[1:]]
        tick = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / tick
        daemon = 0.0
        for p in (tree(self.pid) if self.pid else []):
            try:
                t = p.cpu_times()
                daemon += t.user + t.system
            except Exception:  # noqa: BLE001 - gone meanwhile
                pass
        own = sum(os.times()[:2])
        return time.monotonic(), busy, daemon, own

    def sample(self) -> dict:
        now = self._read()
        dt = max(1e-6, now[0] - self.last[0])
        busy, daemon, own = ((now[i] - self.last[i]) / dt for i in (1, 2, 3))
        self.last = now
        # NOTE: a restarted worker's CPU time starts again from 0: the daemon's share can read low
        return {"cpu_daemon": round(max(0.0, daemon), 2), "cpu_clients": round(own, 2),
                "cpu_other": round(max(0.0, busy - max(0.0, daemon) - own), 2)}


def _status(control: str) -> dict:
    with ControlClient(control, timeout=10) as ctl:
        return ctl.call("status")


def soak(frames: str, control: str, pid: int | None, *, clients: int = 16, in_flight: int = 4, duration: float = 60,
         interval: float = 5.0, warmup: float = 5.0, wait_converged: bool = False, min_hold: float = 0.7,
         queue_depth: int = 64, kill_worker_every: float | None = None, model: str = MODEL, size: int = SIZE,
         seed: int = 0, log=print) -> dict:
    ref_model = tunerd.load_model(model, input_size=size, backend="numpy")
    rng = np.random.default_rng(0)
    inputs = [rng.standard_normal(ref_model.input_shape).astype(np.float32) for _ in range(8)]
    refs = [ref_model.run(x) for x in inputs]
    books, stop, failures = Books(), threading.Event(), []
    threads = [threading.Thread(target=client_loop, args=(frames, inputs, refs, in_flight, stop, books, k, failures),
                                daemon=True, name=f"soak-client-{k}") for k in range(clients)]
    idle = footprint(pid) if pid else None
    for t in threads:
        t.start()
    t_start = time.monotonic()
    # warm-up: the pipeline's rings and plans, every client connected, a pinned config in force (or
    # the tuner converged): what is measured afterwards is serving alone
    def settled() -> bool:
        st = _status(control)
        return (st["config"] == st["pinned"]) if st["pinned"] else (not wait_converged or st["state"] == "converged")

    while time.monotonic() - t_start < warmup or not settled():
        if time.monotonic() - t_start > max(warmup, 300):
            failures.append("no convergence during the warm-up")
            break
        time.sleep(0.5)
    # NOTE: footprints before status calls: a control connection just closed may still hold an fd
    base = footprint(pid) if pid else None
    st0 = _status(control)
    samples = []
    cpu = CpuMeter(pid)
    t0 = last_t = time.monotonic()
    last_ok = books.ok
    max_queue = max_in_flight = 0
    kills = []                           # (t, pid)
    rng = np.random.default_rng(seed)
    last_kill, ok_at_kill = t0, books.ok
    while time.monotonic() - t0 < duration and not failures:
        step = min(interval, max(0.0, duration - (time.monotonic() - t0)))
        while kill_worker_every and step > 0:   # faults between samples
            nap = min(step, max(0.05, kill_worker_every - (time.monotonic() - last_kill)))
            time.sleep(nap)
            step -= nap
            if time.monotonic() - last_kill >= kill_worker_every and books.ok > ok_at_kill + 20:
                workers = [p.pid for p in tree(pid)[1:] if is_stage_worker(p)]
                if workers:
                    victim = int(rng.choice(workers))
                    os.kill(victim, signal.SIGKILL)
                    kills.append((round(time.monotonic() - t0, 2), victim))
                    last_kill, ok_at_kill = time.monotonic(), books.ok
        time.sleep(step)
        now = time.monotonic()
        with books.lock:
            ok = books.ok
            lat = [ms for done, ms in books.latencies if done > last_t]
        fp = footprint(pid) if pid else None
        st = _status(control)
        max_queue = max(max_queue, st["queue"])
        max_in_flight = max(max_in_flight, st["queue"] + st["in_flight"])
        sample = {"t": round(now - t0, 1), "fps": round((ok - last_ok) / (now - last_t), 2),
                  "p99_ms": percentile(lat, 99), "queue": st["queue"], "in_flight": st["in_flight"],
                  "config": st["config"], "state": st["state"]}
        sample.update(cpu.sample())
        if fp:
            sample.update(pss_mib=round(fp.pss_bytes / 2**20, 2), fds=fp.fds, memfds=fp.memfds, dev_shm=fp.dev_shm)
            rss = _daemon_rss(pid)
            if rss:
                sample["daemon_rss_mib"] = round(rss / 2**20, 2)
        samples.append(sample)
        log(f"soak: {sample}")
        last_t, last_ok = now, ok
    end = footprint(pid) if pid else None
    st_end = _status(control)
    stop.set()
    for t in threads:
        t.join(90)
    time.sleep(1.0)                         # the daemon notices the clients are gone
    closed = footprint(pid) if pid else None
    st_after = _status(control)

    third = max(1, len(samples) // 3)
    # medians: a sample taken while another process held the cores should not decide
    first = float(np.median([s["fps"] for s in samples[:third]])) if samples else 0.0
    last = float(np.median([s["fps"] for s in samples[-third:]])) if samples else 0.0
    lat_all = [ms for done, ms in books.latencies if t0 <= done]
    other_first = float(np.median([s["cpu_other"] for s in samples[:third]])) if samples else 0.0
    other_last = float(np.median([s["cpu_other"] for s in samples[-third:]])) if samples else 0.0
    served = st_after["frames_served"] - st0["frames_served"]
    report = {
        "clients": clients, "in_flight_per_client": in_flight, "seconds": round(last_t - t0, 1),
        "requests_sent": books.sent, "replies_ok": books.ok, "replies_error": dict(books.errors),
        "unexpected_replies": books.unexpected, "bad_outputs": books.bad_output,
        "lost": books.sent - books.ok - sum(books.errors.values()),
        "fps_first_third": round(first, 2), "fps_last_third": round(last, 2),
        "cpu_other_first_third": round(other_first, 2), "cpu_other_last_third": round(other_last, 2),
        "fps_overall": round(len(lat_all) / max(1e-9, last_t - t0), 2),
        "latency_ms": {"p50": percentile(lat_all, 50), "p90": percentile(lat_all, 90),
                       "p99": percentile(lat_all, 99), "max": max(lat_all) if lat_all else None},
        "max_queue": max_queue, "max_admitted": max_in_flight, "queue_depth": queue_depth,
        "daemon_frames_served_during": served, "restarts": st_after["restarts"] - st0["restarts"],
        "workers_killed": len(kills), "kills": kills,
        "config": st_end["config"], "state": st_end["state"], "samples": samples, "failures": failures,
    }
    if pid:
        report["footprint"] = {"idle": idle.to_dict(), "after_warmup": base.to_dict(), "end": end.to_dict(),
                               "clients_closed": closed.to_dict()}
        growth = end.pss_bytes - base.pss_bytes
        report["pss_growth_mib"] = round(growth / 2**20, 2)
        half = samples[len(samples) // 2:]
        rss_half = [s["daemon_rss_mib"] for s in half if "daemon_rss_mib" in s]
        if len(rss_half) >= 2:      # the daemon process alone: what the serving-cost issue's target is about
            report["daemon_rss_growth_second_half_pct"] = round(100 * (rss_half[-1] - rss_half[0]) / rss_half[0], 2)
        if len(half) >= 3 and not kills:   # MiB/min over the second half: a leak shows as a steady slope
            slope = np.polyfit([s["t"] for s in half], [s["pss_mib"] for s in half], 1)[0]
            report["pss_slope_mib_per_min"] = round(60 * float(slope), 3)
        if growth > max(PSS_NOISE_BYTES, PSS_NOISE_FRACTION * base.pss_bytes):
            failures.append(f"PSS grew by {growth / 2**20:.1f} MiB")
        # NOTE: a pipeline restart (after a worker was killed) drops the pool of spare rings: fewer
        # descriptors afterwards is fine, more is a leak
        # (a few descriptors of just-closed client connections may still be open in ZeroMQ's I/O thread)
        if end.fds > base.fds + 8 or end.memfds > base.memfds or end.dev_shm > base.dev_shm:
            failures.append(f"descriptors grew under load: {base.to_dict()} -> {end.to_dict()}")
        if closed.fds > base.fds + 8 or closed.memfds > base.memfds or closed.dev_shm:
            failures.append(f"descriptors left after the clients went: {closed.to_dict()}")
    if report["lost"] or books.unexpected or books.bad_output:
        failures.append(f"{report['lost']} lost, {books.unexpected} unexpected replies, {books.bad_output} wrong outputs")
    if kills and report["restarts"] < len(kills):
        failures.append(f"{len(kills)} workers killed but {report['restarts']} pipeline restarts")
    if not kills and report["restarts"]:
        failures.append(f"{report['restarts']} pipeline restarts without a fault injected")
    if max_in_flight > queue_depth:
        failures.append(f"admission exceeded queue_depth: {max_in_flight} > {queue_depth}")
    warnings = []
    if samples and last < min_hold * first:
        text = f"throughput fell from {first:.1f} to {last:.1f} fps"
        if other_last - other_first >= OTHER_LOAD_CORES:
            warnings.append(f"{text} while other processes' CPU rose from {other_first:.2f} to {other_last:.2f} "
                            "cores: the machine's doing, not counted as a failure")
        else:
            failures.append(text)
    report["warnings"] = warnings
    if not samples:
        failures.append("no samples")
    report["ok"] = not failures
    return report


def _feeder(address: str, x: np.ndarray, stop: threading.Event) -> None:
    """Light load that does not mind the daemon dying under it."""
    from tunerd.wire.client import Client, ClientError
    while not stop.is_set():
        try:
            with Client(address, timeout=2) as c:
                while not stop.is_set():
                    c.infer(x)
        except ClientError:
            time.sleep(0.2)


def daemon_kill_cycles(d: DaemonProcess, cycles: int, *, seed: int = 0, log=print) -> dict:
    """``cycles`` times: SIGKILL the daemon under light load, then start it again on the same
    sockets and state directory. A report with ``ok``."""
    from tunerd.daemon.state import read_json
    rng = random.Random(seed)
    ref_model = tunerd.load_model(MODEL, input_size=SIZE, backend="numpy")
    x = np.random.default_rng(seed).standard_normal(ref_model.input_shape).astype(np.float32)
    want = ref_model.run(x)
    problems, restart_s, stale_seen, stored_used = [], [], 0, 0
    stop = threading.Event()
    feeder = threading.Thread(target=_feeder, args=(d.frames, x, stop), daemon=True)
    feeder.start()
    deadline = time.monotonic() + 300
    while d.status()["state"] != "converged" and time.monotonic() < deadline:   # a tuned state to keep
        time.sleep(1)
    stop.set()
    feeder.join(10)
    stored = d.status()["best"]
    log(f"daemon kills: tuned {stored} before the first kill")
    marker = "starting from the stored best"
    used_before = d.log_path.read_text(errors="replace").count(marker)
    for cycle in range(cycles):
        stop = threading.Event()
        feeder = threading.Thread(target=_feeder, args=(d.frames, x, stop), daemon=True)
        feeder.start()
        time.sleep(rng.uniform(0.5, 4.0))
        workers = d.kill()
        stop.set()
        feeder.join(10)
        stale = [a for a in (d.frames, d.control) if Path(a[len("ipc://"):]).exists()]
        stale_seen += len(stale) == 2
        if not gone(workers, 15):
            problems.append(f"cycle {cycle}: workers of the killed daemon still running")
        for path in (d.state_dir / "tuned").glob("*.json"):
            if read_json(path) is None:
                problems.append(f"cycle {cycle}: {path.name} does not read back")
        t = time.monotonic()
        try:
            d.start()
        except RuntimeError as err:
            problems.append(f"cycle {cycle}: no restart: {err}")
            break
        restart_s.append(time.monotonic() - t)
        from tunerd.wire.client import Client
        with Client(d.frames, timeout=30) as c:
            if not np.allclose(c.infer(x), want, rtol=0, atol=1e-6):
                problems.append(f"cycle {cycle}: wrong output after the restart")
        log(f"daemon kill {cycle + 1}/{cycles}: restarted in {restart_s[-1]:.1f} s")
    stored_used = d.log_path.read_text(errors="replace").count(marker) - used_before
    if stored and stored.get("config") and stored_used < len(restart_s):
        problems.append(f"only {stored_used} of {len(restart_s)} restarts started from the stored best")
    return {"daemon_kills": cycles, "stored_best_before_kills": stored, "restarts_ok": len(restart_s),
            "stale_sockets_left_by_kill": stale_seen,
            "restart_s_median": round(float(np.median(restart_s)), 2) if restart_s else None,
            "restarts_verifying_stored_best": stored_used, "problems": problems, "ok": not problems}


def _daemon_rss(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of measured load (default 60)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--in-flight", type=int, default=4, help="frames outstanding per client")
    ap.add_argument("--interval", type=float, default=5.0, help="seconds between samples")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds of load before measuring")
    ap.add_argument("--min-hold", type=float, default=0.7,
                    help="median fps of the last third of the samples / of the first third, at least (0.7: "
                         "a 2-core machine shared with other work is noisy)")
    ap.add_argument("--pin", default=DEFAULT_PIN, help=f"own daemon: config to pin (default {DEFAULT_PIN!r}; "
                                                       "'none': tune, and warm up until converged)")
    ap.add_argument("--kill-worker-every", type=float, metavar="S", help="SIGKILL a stage worker every S seconds")
    ap.add_argument("--daemon-kills", type=int, default=0, metavar="N",
                    help="own daemon: afterwards, SIGKILL and restart it N times")
    ap.add_argument("--state-kills", type=int, default=0, metavar="N",
                    help="SIGKILL a process rewriting tuned state N times mid-write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--frames", help="a running daemon's frames address (default: start one)")
    ap.add_argument("--control", help="its control address (required with --frames)")
    ap.add_argument("--pid", type=int, help="its pid (for footprint figures)")
    ap.add_argument("--workdir", help="own daemon's sockets, state and log (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    kw = dict(clients=args.clients, in_flight=args.in_flight, duration=args.duration, interval=args.interval,
              warmup=args.warmup, min_hold=args.min_hold, kill_worker_every=args.kill_worker_every, seed=args.seed,
              log=log)
    if args.frames:
        if not args.control:
            ap.error("--frames needs --control")
        report = soak(args.frames, args.control, args.pid, **kw)
    else:
        workdir = Path(args.workdir or tempfile.mkdtemp(prefix="tunerd-soak-"))
        extra = () if args.pin == "none" else ("--pin", args.pin)
        with DaemonProcess(workdir, name="soak", extra=extra) as d:
            report = soak(d.frames, d.control, d.pid, wait_converged=args.pin == "none", **kw)
            report["daemon_exit"] = d.stop()
        if args.daemon_kills:   # a daemon that tunes (and stores what it found), same state directory
            with DaemonProcess(workdir, name="crash", state_dir=d.state_dir) as crash:
                report["daemon_kill_cycles"] = daemon_kill_cycles(crash, args.daemon_kills, seed=args.seed, log=log)
                report["daemon_kill_cycles"]["exit"] = crash.stop()
            report["ok"] = report["ok"] and report["daemon_kill_cycles"]["ok"]
        report["ok"] = report["ok"] and report["daemon_exit"] == 0
        if args.state_kills:
            report["state_write_kills"] = crash_state_writes(workdir / "state-crash", args.state_kills, seed=args.seed)
            report["ok"] = report["ok"] and report["state_write_kills"]["ok"]
    return print_report(report, args.json, text_skips=("samples",))


if __name__ == "__main__":
    sys.exit(main())
