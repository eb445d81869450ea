#!/usr/bin/env python3
"""Load generator for tunerd: N clients, closed loop (K frames in flight each) or a fixed rate.

    tools/loadgen.py --frames tcp://127.0.0.1:5555 --clients 4 --in-flight 8 --duration 10
    tools/loadgen.py --rate 30 --count 600 --json          # open loop, 30 frames/s in all
The frame shape comes from --shape, else from the daemon's status (`input_shape`, via --control).
It stops by itself (duration or count), drains replies and reports fps, latency percentiles
(round trip at the client, and the daemon's own `latency_us`) and errors by code. With --colocate
(and --control) it runs on the daemon's own CPUs (status `host_cpus`, re-read every second), off
the bottleneck stage's cores: where a client on the same board should run.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tunerd.wire import protocol
from tunerd.wire.client import Client, ClientError, ControlClient, DaemonNotRunning, load_curve_keypair


@dataclass
class Tally:
    latencies_ms: list = field(default_factory=list)
    server_us: list = field(default_factory=list)
    errors: Counter = field(default_factory=Counter)
    sent: int = 0

    def add(self, other: "Tally") -> None:
        self.latencies_ms += other.latencies_ms
        self.server_us += other.server_us
        self.errors.update(other.errors)
        self.sent += other.sent


COLOCATE_EVERY_S = 1.0     # --colocate: how often the daemon's host_cpus are read again


class Budget:
    """Frames left to send across all clients (None = unlimited), shared by the threads."""

    def __init__(self, count: int | None):
        self.left = count
        self._lock = threading.Lock()

    def take(self) -> bool:
        if self.left is None:
            return True
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True


def _record(tally: Tally, reply: protocol.Reply, sent_at: float, now: float) -> None:
    if reply.ok:
        tally.latencies_ms.append((now - sent_at) * 1e3)
        if reply.latency_us is not None:
            tally.server_us.append(reply.latency_us)
    else:
        tally.errors[reply.error_code or "unknown"] += 1


def run_client(args, frame: np.ndarray, budget: Budget, deadline: float, rate: float | None, tally: Tally) -> None:
    """One client's loop: keep args.in_flight frames in flight (closed loop) or send at ``rate``."""
    sent_at: dict[int, float] = {}
    keypair = load_curve_keypair(args.curve_client_cert) if args.curve_client_cert else None
    with Client(args.frames, timeout=args.timeout, max_in_flight=args.in_flight,
                curve_server_key=args.curve_server_key, curve_keypair=keypair) as client:
        next_send = time.monotonic()

        def take_replies(wait: float) -> None:
            now = time.monotonic()
            for reply in client.collect(wait):
                _record(tally, reply, sent_at.pop(reply.id, now), time.monotonic())

        while time.monotonic() < deadline:
            now = time.monotonic()
            due = rate is None or now >= next_send
            if due and client.in_flight < args.in_flight:
                if not budget.take():
                    break
                id = client.submit(frame)
                sent_at[id] = time.monotonic()
                tally.sent += 1
                if rate is not None:
                    next_send += 1.0 / rate
                continue
            if rate is not None and client.in_flight < args.in_flight:
                wait = next_send - time.monotonic()     # the next frame is due before any reply
            else:
                wait = 0.1
            wait = max(0.0, min(wait, 0.1, deadline - time.monotonic()))
            if client.in_flight:
                take_replies(wait)
            else:
                time.sleep(wait)    # NOTE: open-loop pacing with nothing in flight, not a socket wait
            if client.in_flight and sent_at and time.monotonic() - min(sent_at.values()) > args.timeout:
                tally.errors["timeout"] += client.abandon()
                sent_at.clear()
        # drain what is still in flight
        drain_end = time.monotonic() + args.timeout
        while client.in_flight and time.monotonic() < drain_end:
            take_replies(drain_end - time.monotonic())
        tally.errors["timeout"] += client.abandon()
        if not tally.errors["timeout"]:
            del tally.errors["timeout"]


def percentile(values: list, q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def input_shape_from_daemon(args) -> list[int]:
    with ControlClient(args.control, args.timeout) as ctl:
        status = ctl.call(protocol.STATUS)
    shape = status.get("input_shape")
    if not isinstance(shape, list) or not shape:
        raise ClientError("the daemon's status has no input_shape; pass --shape")
    return shape


def colocate(args, stop: threading.Event, where: list) -> None:
    """Keep every thread of this process on the daemon's ``host_cpus`` until ``stop``; the CPUs
    used go into ``where``. A status that cannot be read is skipped: the load goes on meanwhile."""
    from tunerd.pipeline.worker import pin_all_threads
    current = None
    try:
        ctl = ControlClient(args.control, args.timeout)
    except ClientError as err:
        print(f"loadgen: --colocate: {err}; running where the scheduler puts it", file=sys.stderr)
        return
    with ctl:
        while True:
            try:
                cpus = ctl.call(protocol.STATUS).get("host_cpus")
            except (ClientError, AttributeError):
                cpus = None
            if cpus and cpus != current:
                try:
                    pin_all_threads(cpus)
                    current = cpus
                    where.append(list(cpus))
                except (OSError, ValueError):
                    pass        # CPUs this process may not use: stay where it is
            if stop.wait(COLOCATE_EVERY_S):
                return


def run(args) -> dict:
    shape = args.shape or input_shape_from_daemon(args)
    frame = np.random.default_rng(args.seed).standard_normal(shape).astype(np.float32)
    budget = Budget(args.count)
    duration = args.duration if args.duration is not None else (None if args.count else 10.0)
    start = time.monotonic()
    deadline = start + duration if duration is not None else float("inf")
    rate = args.rate / args.clients if args.rate else None
    tallies = [Tally() for _ in range(args.clients)]
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            run_client(args, frame, budget, deadline, rate, tallies[i])
        except Exception as err:  # noqa: BLE001 - reported once, after the other clients end
            failures.append(err)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(args.clients)]
    stop, placed = threading.Event(), []
    follower = (threading.Thread(target=colocate, args=(args, stop, placed), daemon=True)
                if args.colocate else None)
    if follower is not None:
        follower.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - start
    stop.set()
    if follower is not None:
        follower.join(args.timeout)
    if failures:
        raise failures[0]
    total = Tally()
    for t in tallies:
        total.add(t)
    ok = len(total.latencies_ms)
    return {
        "frames_sent": total.sent, "frames_ok": ok, "elapsed_s": round(elapsed, 3),
        "fps": ok / elapsed if elapsed > 0 else 0.0,
        "clients": args.clients, "in_flight": args.in_flight, "rate": args.rate, "shape": list(shape),
        "latency_ms": {"p50": percentile(total.latencies_ms, 50), "p99": percentile(total.latencies_ms, 99),
                       "max": max(total.latencies_ms) if ok else None},
        "server_latency_ms": {"p50": (percentile(total.server_us, 50) or 0) / 1e3 if total.server_us else None,
                              "p99": (percentile(total.server_us, 99) or 0) / 1e3 if total.server_us else None},
        "errors": dict(total.errors),
        "colocated_cpus": placed,
    }


def render(report: dict) -> str:
    lat, srv = report["latency_ms"], report["server_latency_ms"]
    ms = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    lines = [
        f"{report['frames_ok']}/{report['frames_sent']} frames in {report['elapsed_s']:.2f} s: {report['fps']:.1f} fps "
        f"({report['clients']} clients, " + (f"{report['rate']:g} frames/s" if report["rate"] else
                                             f"{report['in_flight']} in flight each") + ")",
        f"latency ms: p50 {ms(lat['p50'])}  p99 {ms(lat['p99'])}  max {ms(lat['max'])}   "
        f"(daemon: p50 {ms(srv['p50'])}  p99 {ms(srv['p99'])})",
    ]
    if report["errors"]:
        lines.append("errors: " + ", ".join(f"{code} {n}" for code, n in sorted(report["errors"].items())))
    return "\n".join(lines)


def _shape(text: str) -> list[int]:
    try:
        shape = [int(d) for d in text.replace("x", ",").split(",")]
    except ValueError:
        shape = []
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"a shape is positive integers like 1,3,224,224: {text!r}")
    return shape


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loadgen", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", default=os.environ.get(protocol.FRAMES_ENV) or protocol.DEFAULT_FRAMES_ADDRESS,
                   metavar="ADDR", help="frames socket (default $TUNERD_FRAMES or %(default)s)")
    p.add_argument("--control", default=None, metavar="ADDR",
                   help="control socket, asked for input_shape when --shape is not given")
    p.add_argument("--shape", type=_shape, help="frame shape, e.g. 1,3,224,224")
    p.add_argument("-c", "--clients", type=int, default=1, help="client threads (default 1)")
    p.add_argument("-k", "--in-flight", type=int, default=4, help="frames in flight per client (default 4)")
    p.add_argument("--rate", type=float, default=None, help="open loop: total frames per second")
    p.add_argument("-d", "--duration", type=float, default=None, help="seconds (default 10 unless --count)")
    p.add_argument("-n", "--count", type=int, default=None, help="total frames to send")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds a frame may wait for its reply")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--curve-server-key", metavar="KEY|FILE")
    p.add_argument("--curve-client-cert", metavar="FILE")
    p.add_argument("--colocate", action="store_true",
                   help="run on the daemon's own CPUs (status host_cpus, followed every second; needs --control)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.clients < 1 or args.in_flight < 1 or (args.rate is not None and args.rate <= 0) \
            or (args.count is not None and args.count < 1) or (args.duration is not None and args.duration <= 0):
        parser.error("--clients, --in-flight, --rate, --count and --duration must be positive")
    if args.colocate and not args.control:
        parser.error("--colocate needs --control (the daemon's status says where it runs)")
    try:
        report = run(args)
    except DaemonNotRunning as err:
        print(f"loadgen: {err}", file=sys.stderr)
        return 3
    except (ClientError, OSError) as err:
        print(f"loadgen: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 0 if report["frames_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
