#!/usr/bin/env python3
"""Served vs in-process: the same model and pipeline config, side by side in one run.

- in-process: `tunerd bench --pipeline` (a Pipeline fed from this process, no sockets);
- served: `tunerd serve --pin CONFIG` fed by tools/loadgen.py over ipc sockets.

Both place their frame-making, frame-feeding side as tunerd does: the in-process side moves itself
off the bottleneck stage's cores (Pipeline.place_host), the daemon does the same, and the load
generator follows the daemon there for the throughput runs (loadgen --colocate).

Throughput with the pipeline kept full (loadgen: several clients, several frames in flight each),
and latency with one frame at a time (so it is the serving path's own latency, not queueing). Runs
alternate in-process / served for ``--rounds`` rounds; medians and ratios are reported, and the CPU
time the daemon's own process spends per frame served (all its threads; the stage workers apart): a
figure the machine's load hardly moves, unlike fps and latency. Emulated
platform of this machine (big = first half of the CPUs at full speed, little = the rest at 0.5).

    python tools/bench_serve.py [--model zoo:squeezenet] [--input-size 224] [--pipeline CONFIG]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "tools"))

from demo import emulate_spec, wait_for_daemon  # noqa: E402


def inprocess(model, config: str, spec: str, sysfs: str, frames: int, latency_frames: int, backend: str) -> dict:
    from tunerd.pipeline.executor import Pipeline
    from tunerd.pipeline.bench import bench_pipeline
    full = bench_pipeline(model, config, platform_spec=spec, sysfs_root=sysfs, frames=frames, warmup=5,
                          backend=backend)
    x = np.random.default_rng(0).standard_normal(model.input_shape).astype(np.float32)
    lat = []
    with Pipeline(model, config, spec, sysfs_root=sysfs, backend=backend) as pipe:
        placed = 0.0
        for i in range(latency_frames + 3):
            if time.perf_counter() - placed >= 1.0:
                # NOTE: once a second, as the daemon does (Pipeline.place_host); before every frame it
                # cost this side more than the sockets cost the served one (an "added" latency < 0)
                pipe.place_host()
                placed = time.perf_counter()
            t0 = time.perf_counter()
            pipe.submit(i, x)
            while not pipe.poll(1.0):
                pass
            if i >= 3:
                lat.append(1000 * (time.perf_counter() - t0))
    return {"fps": full["fps"], "latency_ms_p50": float(np.median(lat)), "main_cpu_ms_per_frame": full["main_ms_per_frame"]}


def _echo(address: str, reply_bytes: int) -> None:
    """A ROUTER that answers every message with a reply of ``reply_bytes`` until it gets b"stop"."""
    import zmq
    ctx = zmq.Context()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(address)
    reply = bytes(reply_bytes)
    while True:
        msg = sock.recv_multipart(copy=False)
        if msg[-1].bytes == b"stop":
            break
        sock.send_multipart([msg[0], b"h", reply])
    sock.close(linger=0)
    ctx.term()


def transport_rtt(tmp: Path, request_shape, reply_shape, count: int = 300) -> dict:
    """The bare ZeroMQ round trip over ipc between two Python processes, with the frame and reply
    sizes of this model: the floor any client's added latency stands on here."""
    import multiprocessing

    import zmq
    address = f"ipc://{tmp}/echo.sock"
    child = multiprocessing.get_context("spawn").Process(
        target=_echo, args=(address, 4 * int(np.prod(reply_shape))), daemon=True)
    child.start()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.connect(address)
    frame = np.zeros(request_shape, np.float32)
    times = []
    try:
        for _ in range(count + 20):
            t0 = time.perf_counter()
            sock.send_multipart([b"h", frame])
            sock.recv_multipart()
            times.append(1000 * (time.perf_counter() - t0))
        sock.send_multipart([b"stop"])
    finally:
        sock.close(linger=0)
        ctx.term()
        child.join(10)
    times = times[20:]
    return {"rtt_ms_p50": float(np.median(times)), "rtt_ms_p10": float(np.percentile(times, 10))}


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, all threads) of the daemon's own process, not its stage workers:
    what serving costs besides the compute, a figure the machine's load hardly moves."""
    import psutil
    t = psutil.Process(pid).cpu_times()
    return t.user + t.system


def served(args, config: str, spec: str, sysfs: str, tmp: Path) -> dict:
    frames, control = f"ipc://{tmp}/frames.sock", f"ipc://{tmp}/control.sock"
    daemon = subprocess.Popen([str(BIN / "tunerd"), "serve", "--model", args.model, "--input-size",
                               str(args.input_size), "--platform", spec, "--sysfs-root", sysfs, "--frames", frames,
                               "--control", control, "--state-dir", str(tmp / "state"), "--pin", config,
                               "--log-level", "warning", "--backend", args.backend])
    try:
        wait_for_daemon(control, daemon, timeout=600)

        def loadgen(*extra) -> dict:
            out = subprocess.run([sys.executable, str(ROOT / "tools" / "loadgen.py"), "--frames", frames,
                                  "--control", control, "--json", *extra], capture_output=True, text=True, check=True)
            return json.loads(out.stdout)
        loadgen("-c", "1", "-k", "4", "-n", "10")                     # warm-up
        # NOTE: --colocate for throughput: the load generator runs where the daemon runs (off the
        # bottleneck's cores), the arrangement of the in-process side, whose one process makes and
        # feeds frames. Not for latency: one frame at a time leaves cores idle, and sharing one
        # core with the daemon and a stage only adds context switches to every round trip.
        cpu0 = _cpu_seconds(daemon.pid)
        full = loadgen("-c", str(args.clients), "-k", "4", "-d", str(args.seconds), "--colocate")
        daemon_ms = 1000 * (_cpu_seconds(daemon.pid) - cpu0) / full["frames_ok"] if full["frames_ok"] else None
        one = loadgen("-c", "1", "-k", "1", "-n", str(args.latency_frames))
        return {"fps": full["fps"], "latency_ms_p50": one["latency_ms"]["p50"],
                "server_latency_ms_p50": one["server_latency_ms"]["p50"], "daemon_cpu_ms_per_frame": daemon_ms}
    finally:
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(60)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:squeezenet")
    ap.add_argument("--backend", default="onnxruntime", choices=("numpy", "onnxruntime"),
                    help="what runs the stages, on both sides (default onnxruntime)")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--pipeline", help="config to compare (default: two stages, big then little, cut in the middle)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--frames", type=int, default=200, help="in-process timed frames per round")
    ap.add_argument("--seconds", type=float, default=15, help="served throughput run per round")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--latency-frames", type=int, default=100)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)

    import tunerd
    from tunerd.platform.fakesysfs import make_emulated_tree
    spec = emulate_spec()
    with tempfile.TemporaryDirectory(prefix="tunerd-bench-serve-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("TUNERD_CACHE_DIR", str(tmp / "cache"))
        sysfs = str(make_emulated_tree(spec, tmp / "fs"))
        model = tunerd.load_model(args.model, input_size=args.input_size, backend="numpy")
        n = len(model.units)
        config = args.pipeline or f"0-{n // 2 - 1}@big:1 | {n // 2}-{n - 1}@little:1"
        rows = []
        for r in range(args.rounds):
            print(f"[bench_serve] round {r + 1}/{args.rounds}: in-process ...", file=sys.stderr, flush=True)
            a = inprocess(model, config, spec, sysfs, args.frames, args.latency_frames, args.backend)
            print(f"[bench_serve] round {r + 1}/{args.rounds}: served ...", file=sys.stderr, flush=True)
            b = served(args, config, spec, sysfs, tmp)
            rows.append({"inprocess": a, "served": b})
        print("[bench_serve] bare ZeroMQ round trip ...", file=sys.stderr, flush=True)
        transport = transport_rtt(tmp, model.input_shape, model.output_shape)
    med = lambda side, key: statistics.median(r[side][key] for r in rows)  # noqa: E731
    result = {"model": args.model, "input_size": args.input_size, "platform": spec, "config": config,
              "backend": args.backend,
              "rounds": rows,
              "inprocess_fps": med("inprocess", "fps"), "served_fps": med("served", "fps"),
              "fps_ratio": med("served", "fps") / med("inprocess", "fps"),
              "inprocess_latency_ms_p50": med("inprocess", "latency_ms_p50"),
              "served_latency_ms_p50": med("served", "latency_ms_p50"),
              "added_latency_ms": med("served", "latency_ms_p50") - med("inprocess", "latency_ms_p50"),
              "client_and_sockets_ms": med("served", "latency_ms_p50") - med("served", "server_latency_ms_p50"),
              "zmq_rtt_ms_p50": transport["rtt_ms_p50"], "zmq_rtt_ms_p10": transport["rtt_ms_p10"],
              "inprocess_main_cpu_ms_per_frame": med("inprocess", "main_cpu_ms_per_frame"),
              "daemon_cpu_ms_per_frame": med("served", "daemon_cpu_ms_per_frame")}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.model} @{args.input_size}, {spec}, config {config} on {args.backend} (emulated platform), "
              f"median of {args.rounds} alternating rounds")
        print(f"  throughput: in-process {result['inprocess_fps']:.1f} fps, served {result['served_fps']:.1f} fps "
              f"-> ratio {result['fps_ratio']:.3f}")
        print(f"  latency p50 (one frame at a time): in-process {result['inprocess_latency_ms_p50']:.2f} ms, "
              f"served {result['served_latency_ms_p50']:.2f} ms -> added {result['added_latency_ms']:.2f} ms")
        print(f"  of which client and sockets {result['client_and_sockets_ms']:.2f} ms; a bare ZeroMQ ipc round "
              f"trip with these message sizes: p50 {result['zmq_rtt_ms_p50']:.2f} ms, "
              f"p10 {result['zmq_rtt_ms_p10']:.2f} ms")
        print(f"  CPU a frame costs the feeding side: in-process {result['inprocess_main_cpu_ms_per_frame']:.2f} ms "
              f"(the Pipeline's copies, messages and books), daemon {result['daemon_cpu_ms_per_frame']:.2f} ms "
              f"(its whole process: sockets, protocol, poll loop, pipeline, tuner; target <= 0.3 ms)")
        print(f"  added latency beyond the bare round trip: {result['added_latency_ms'] - result['zmq_rtt_ms_p50']:.2f} ms "
              f"(target <= 0.5 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
