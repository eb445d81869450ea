#!/usr/bin/env python3
"""Fairness between clients: a polite client's latency alone and while another floods the daemon.

One daemon serves a pinned config (`--pipeline`, default a 1+1 cut of the model over the emulated
big and little cores). The polite client sends one frame at a time (`Client(busy_retries=0)`, so a
`busy` reply is counted, not hidden by a retry); the flooder is a raw DEALER that keeps `--flood`
frames in flight (each reply, busy or not, is followed by another frame). Rounds alternate polite
alone / polite with the flooder; reported: the polite client's p50 and p95 latency each way and
their ratio, the busy replies each got, and how many of the flooder's frames were answered while
one polite frame waited (round-robin admission bounds it by the frames inside the pipeline), and
the frames per second served to both while flooded.

    python tools/bench_fairness.py [--model zoo:squeezenet] [--input-size 224] [--rounds 3] [--json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT))

from harness import DaemonProcess  # noqa: E402
from tunerd.wire import protocol  # noqa: E402
from tunerd.wire.client import Client, RemoteError  # noqa: E402


class Flooder(threading.Thread):
    """Keeps ``depth`` frames in flight on one DEALER; counts replies and busy replies."""

    def __init__(self, address: str, shape, depth: int):
        super().__init__(daemon=True)
        self.address, self.depth = address, depth
        self.x = np.zeros(shape, np.float32)
        self.replies = self.busy = self.served = 0
        self.stop = threading.Event()

    def run(self) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.connect(self.address)
        ids = iter(range(1, 10**9))
        for _ in range(self.depth):
            sock.send_multipart(protocol.encode_request(next(ids), self.x))
        while not self.stop.is_set():
            if not sock.poll(50):
                continue
            reply = protocol.decode_reply(sock.recv_multipart())
            self.replies += 1
            self.busy += (not reply.ok and reply.error_code == protocol.BUSY)
            self.served += reply.ok
            sock.send_multipart(protocol.encode_request(next(ids), self.x))
        sock.close(linger=0)


def polite(address: str, shape, frames: int, flooder: Flooder | None) -> dict:
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    lat, overtaken, busy = [], [], 0
    with Client(address, timeout=60, busy_retries=0) as c:
        for i in range(frames + 3):
            before = flooder.served if flooder else 0
            t0 = time.perf_counter()
            try:
                c.infer(x)
            except RemoteError as err:
                if err.code != protocol.BUSY:
                    raise
                busy += 1
                continue
            if i >= 3:
                lat.append(1000 * (time.perf_counter() - t0))
                overtaken.append((flooder.served if flooder else 0) - before)
    if not lat:          # every frame refused: there is no latency to speak of
        return {"p50_ms": None, "p95_ms": None, "busy": busy, "answered": 0,
                "flooder_replies_while_waiting_median": None, "flooder_replies_while_waiting_max": None}
    return {"p50_ms": float(np.median(lat)), "p95_ms": float(np.percentile(lat, 95)), "busy": busy,
            "answered": len(lat), "flooder_replies_while_waiting_median": float(np.median(overtaken)),
            "flooder_replies_while_waiting_max": int(max(overtaken))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:squeezenet")
    ap.add_argument("--input-size", type=int, default=224)
    ap.add_argument("--pipeline", help="the pinned config (default: units split in half, big then little)")
    ap.add_argument("--backend", default="numpy", choices=("numpy", "onnxruntime"))
    ap.add_argument("--flood", type=int, default=64, help="frames the flooder keeps in flight (default 64)")
    ap.add_argument("--frames", type=int, default=40, help="polite frames per run (default 40)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--extra", default="", help="more `tunerd serve` options, e.g. '--config F.toml'")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    import tunerd
    model = tunerd.load_model(args.model, input_size=args.input_size, backend="numpy")
    n = len(model.units)
    config = args.pipeline or f"0-{n // 2 - 1}@big:1 | {n // 2}-{n - 1}@little:1"
    shape = tuple(model.input_shape)
    alone, flooded = [], []
    with tempfile.TemporaryDirectory() as tmp, DaemonProcess(
            tmp, model=args.model, size=args.input_size, backend=args.backend,
            extra=("--pin", config, *args.extra.split())) as d:
        polite(d.frames, shape, 5, None)                  # warm-up: sessions built, pages touched
        for r in range(args.rounds):
            alone.append(polite(d.frames, shape, args.frames, None))
            f = Flooder(d.frames, shape, args.flood)
            f.start()
            time.sleep(1.0)                               # the flood reaches its steady state
            served0, t0 = d.status()["frames_served"], time.perf_counter()
            result = polite(d.frames, shape, args.frames, f)
            fps = (d.status()["frames_served"] - served0) / (time.perf_counter() - t0)
            flooded.append({**result, "flooder_busy": f.busy, "flooder_replies": f.replies, "served_fps": fps})
            f.stop.set()
            f.join(10)
            time.sleep(0.5)
            print(f"round {r + 1}: alone p50 {alone[-1]['p50_ms']} ms; flooded p50 {flooded[-1]['p50_ms']} "
                  f"ms, busy {flooded[-1]['busy']}, flooder busy {f.busy} of {f.replies}", file=sys.stderr)
    def med(rows, key):
        values = [r[key] for r in rows if r[key] is not None]
        return statistics.median(values) if values else None
    out = {"model": args.model, "input_size": args.input_size, "config": config, "backend": args.backend,
           "flood": args.flood, "rounds": args.rounds,
           "alone_p50_ms": med(alone, "p50_ms"), "alone_p95_ms": med(alone, "p95_ms"),
           "flooded_p50_ms": med(flooded, "p50_ms"), "flooded_p95_ms": med(flooded, "p95_ms"),
           "polite_busy": sum(r["busy"] for r in flooded + alone),
           "flooder_busy": sum(r["flooder_busy"] for r in flooded),
           "flooder_replies": sum(r["flooder_replies"] for r in flooded),
           "flooder_replies_while_waiting_median": med(flooded, "flooder_replies_while_waiting_median"),
           "flooder_replies_while_waiting_max": max((r["flooder_replies_while_waiting_max"] for r in flooded
                                                     if r["flooder_replies_while_waiting_max"] is not None), default=None),
           "polite_frames_flooded": sum(r["answered"] + r["busy"] for r in flooded),
           "served_fps_flooded": med(flooded, "served_fps")}
    out["p50_ratio"] = (out["flooded_p50_ms"] / out["alone_p50_ms"]) if out["flooded_p50_ms"] else None
    fmt = lambda v, f="{:.1f}": "-" if v is None else f.format(v)  # noqa: E731
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"{args.model} {args.input_size} on {config} ({args.backend}), flooder {args.flood} in flight, "
              f"{args.rounds} rounds:")
        print(f"  polite p50 alone {fmt(out['alone_p50_ms'])} ms, with the flooder {fmt(out['flooded_p50_ms'])} ms: "
              f"{fmt(out['p50_ratio'], '{:.2f}')}x (target <= 3x); p95 {fmt(out['alone_p95_ms'])} / "
              f"{fmt(out['flooded_p95_ms'])} ms")
        print(f"  served while flooded: {out['served_fps_flooded']:.1f} fps (both clients)")
        print(f"  busy replies: polite {out['polite_busy']} of {out['polite_frames_flooded']} while flooded "
              f"(target 0), flooder {out['flooder_busy']} of "
              f"{out['flooder_replies']}")
        print(f"  flooder frames answered while a polite frame waited: median "
              f"{fmt(out['flooder_replies_while_waiting_median'], '{:.0f}')}, max "
              f"{fmt(out['flooder_replies_while_waiting_max'], '{}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
