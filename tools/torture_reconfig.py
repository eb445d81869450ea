#!/usr/bin/env python3
"""Reconfiguration torture: many pipeline switches under continuous load; no frame lost, duplicated,
reordered or changed.

    tools/torture_reconfig.py --reconfigs 1000 --json                 # Pipeline.reconfigure directly
    tools/torture_reconfig.py --mode daemon --reconfigs 200 --json    # `pin` over the control socket

``pipeline`` mode drives ``Pipeline.reconfigure`` on a zoo model (squeezenet at 32x32 by default) on
the emulated big.LITTLE of CPUs 0-1 with random valid configs (tunerd.tuning.genome's random genomes: 1-4
stages, either cluster), switching every 0-3 submitted frames while the pipeline is kept full. Every
outcome must come out once, in submission order, ok, on the epoch the frame entered, and equal to
Model.run bit for bit (stages run one BLAS thread; the reference does too).

``daemon`` mode starts `tunerd serve` and pins random configs (what `tunerctl pin` sends) every
``--pin-every`` s while ``--clients`` clients keep frames in flight; each client's replies must come
back exactly once, in its send order, ok, equal to Model.run, with epochs that never go back.
Exit status 0 when all holds.
"""
from __future__ import annotations

import argparse
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import MODEL, SIZE, SPEC, DaemonProcess, footprint, make_sysfs, log, print_report  # noqa: E402

import tunerd  # noqa: E402


def random_configs(platform, n_units: int, rng: random.Random, count: int) -> list[str]:
    from tunerd.tuning.genome import GenomeSpace
    from tunerd.pipeconfig import ClusterSpec
    space = GenomeSpace([ClusterSpec(c.name, c.core_type, c.cores, 1.0) for c in platform.clusters], n_units)
    return [str(space.to_config(space.random_genome(rng))) for _ in range(count)]


def references(model, inputs: list[np.ndarray]) -> list[np.ndarray]:
    from threadpoolctl import threadpool_limits
    with threadpool_limits(limits=1):    # the stages' BLAS thread count: the same sums, the same bits
        return [model.run(x) for x in inputs]


def torture_pipeline(reconfigs: int, *, seed: int = 0, model_src: str = MODEL, size: int = SIZE, spec: str = SPEC,
                     workdir: Path | None = None, max_switch_gap: int = 3, log=print) -> dict:
    """``reconfigs`` switches of a live Pipeline under load; a report with ``ok``."""
    import os

    from tunerd.pipeline.executor import Pipeline
    from tunerd.platform.spec import resolve_platform

    workdir = Path(workdir or tempfile.mkdtemp(prefix="tunerd-torture-"))
    sysfs = make_sysfs(workdir, spec)
    rng = random.Random(seed)
    model = tunerd.load_model(model_src, input_size=size, backend="numpy")
    platform = resolve_platform(spec, sysfs_root=str(sysfs))
    n = len(model.units)
    configs = random_configs(platform, n, rng, 64)
    nrng = np.random.default_rng(seed)
    inputs = [nrng.standard_normal(model.input_shape).astype(np.float32) for _ in range(8)]
    refs = references(model, inputs)
    entered: dict[int, int] = {}
    config_of: dict[int, str] = {}
    got = []
    failures: list[str] = []
    before = footprint(os.getpid())
    t0 = time.monotonic()
    with Pipeline(model, configs[0], platform, sysfs_root=str(sysfs), max_inflight=8) as pipe:
        config_of[pipe.epoch] = configs[0]
        switches = 0
        next_switch = rng.randint(0, max_switch_gap)
        frame = 0
        last_log = t0
        while switches < reconfigs or len(got) < frame:
            if switches < reconfigs and next_switch <= 0:
                text = rng.choice(configs)
                config_of[pipe.reconfigure(text)] = text
                switches += 1
                next_switch = rng.randint(0, max_switch_gap)
            if switches < reconfigs and pipe.submit(frame, inputs[frame % len(inputs)]):
                entered[frame] = pipe.epoch
                frame += 1
                next_switch -= 1
            got += pipe.poll(0.002 if switches < reconfigs else 0.05)
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                log(f"torture: {switches}/{reconfigs} switches, {frame} frames in, {len(got)} out")
            if time.monotonic() - t0 > 60 + 2.0 * reconfigs:
                failures.append(f"stuck: {len(got)} of {frame} frames out after {time.monotonic() - t0:.0f} s")
                break
        stats = pipe.stats()
        workers_spawned = pipe._next_wid
    elapsed = time.monotonic() - t0
    after = footprint(os.getpid())
    ids = [o.frame_id for o in got]
    if ids != list(range(frame)):
        dup = len(ids) - len(set(ids))
        failures.append(f"outcomes are not frames 0..{frame - 1} once each in order ({len(ids)} outcomes, {dup} "
                        f"duplicated, {frame - len(set(ids))} missing)")
    wrong_epoch = bad = failed = 0
    for o in got:
        if not o.ok:
            failed += 1
            continue
        wrong_epoch += o.epoch != entered.get(o.frame_id)
        bad += not np.array_equal(o.output, refs[o.frame_id % len(refs)])
    if failed or wrong_epoch or bad:
        failures.append(f"{failed} failed, {wrong_epoch} on another epoch, {bad} outputs differ")
    if after.memfds > before.memfds or after.dev_shm > before.dev_shm:
        failures.append(f"shared memory left after close: {before.to_dict()} -> {after.to_dict()}")
    if stats["restarts"]:
        failures.append(f"{stats['restarts']} pipeline restarts")
    return {"mode": "pipeline", "model": model_src, "input_size": size, "platform": spec, "reconfigs": switches,
            "distinct_configs": len(set(config_of.values())), "frames": frame, "outcomes": len(got),
            "lost": frame - len(set(ids)), "duplicated": len(ids) - len(set(ids)), "failed": failed,
            "wrong_epoch": wrong_epoch, "outputs_differ": bad, "restarts": stats["restarts"],
            "workers_spawned": workers_spawned, "seconds": round(elapsed, 1),
            "switch_ms_median": _median([s["request_to_first_out_ms"] for s in stats["switches"]]),
            "memfds_left": after.memfds - before.memfds, "dev_shm_left": after.dev_shm - before.dev_shm,
            "failures": failures, "ok": not failures}


def _median(xs):
    return round(float(np.median(xs)), 2) if xs else None


def _client(address: str, inputs, refs, stop: threading.Event, out: dict, k: int, in_flight: int) -> None:
    import zmq

    from tunerd.wire import protocol
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.linger = 0
    sock.connect(address)
    sent = []            # ids in send order
    expected = 0         # index into sent of the next reply (replies come in send order)
    last_epoch = -1
    problems = out.setdefault("problems", [])
    ok = 0
    try:
        while not stop.is_set() or expected < len(sent):
            while not stop.is_set() and len(sent) - expected < in_flight:
                id = len(sent) + 1
                sock.send_multipart(protocol.encode_request(id, inputs[id % len(inputs)]), copy=False)
                sent.append(id)
            if not sock.poll(60_000):
                problems.append(f"client {k}: no reply within 60 s")
                return
            r = protocol.decode_reply(sock.recv_multipart(copy=False))
            if r.id != sent[expected]:
                problems.append(f"client {k}: reply {r.id} where {sent[expected]} was due")
                return
            expected += 1
            if not r.ok:
                problems.append(f"client {k}: frame {r.id}: {r.error_code} {r.error_message}")
            elif not np.allclose(r.array, refs[r.id % len(refs)], rtol=0, atol=1e-6):
                problems.append(f"client {k}: frame {r.id} differs from Model.run")
            elif r.epoch < last_epoch:
                problems.append(f"client {k}: epoch went back from {last_epoch} to {r.epoch}")
            else:
                ok += 1
            last_epoch = max(last_epoch, r.epoch if r.epoch is not None else -1)
    finally:
        out[k] = {"sent": len(sent), "answered": expected, "ok": ok}
        sock.close(0)


def torture_daemon(reconfigs: int, *, seed: int = 0, clients: int = 4, in_flight: int = 4, pin_every: float = 0.05,
                   workdir: Path | None = None, state_dir: Path | None = None, daemon: DaemonProcess | None = None,
                   log=print) -> dict:
    """``reconfigs`` pins through the control socket while clients send; a report with ``ok``."""
    from tunerd.platform.spec import resolve_platform
    workdir = Path(workdir or tempfile.mkdtemp(prefix="tunerd-torture-"))
    own = daemon is None
    d = daemon or DaemonProcess(workdir, name="torture", state_dir=state_dir)
    try:
        rng = random.Random(seed)
        model = tunerd.load_model(MODEL, input_size=SIZE, backend="numpy")
        platform = resolve_platform(SPEC, sysfs_root=str(d.sysfs))
        configs = random_configs(platform, len(model.units), rng, 64)
        nrng = np.random.default_rng(seed)
        inputs = [nrng.standard_normal(model.input_shape).astype(np.float32) for _ in range(8)]
        refs = references(model, inputs)
        st0 = d.status()
        stop, out = threading.Event(), {}
        threads = [threading.Thread(target=_client, args=(d.frames, inputs, refs, stop, out, k, in_flight), daemon=True)
                   for k in range(clients)]
        for t in threads:
            t.start()
        t0 = time.monotonic()
        pins = 0
        from tunerd.wire.client import ControlClient
        with ControlClient(d.control, timeout=10) as ctl:
            while pins < reconfigs and not out.get("problems"):
                ctl.call("pin", config=rng.choice(configs))
                pins += 1
                if pins % 100 == 0:
                    log(f"torture: {pins}/{reconfigs} pins, {time.monotonic() - t0:.0f} s")
                time.sleep(pin_every * rng.random() * 2)
            ctl.call("unpin")
        stop.set()
        for t in threads:
            t.join(120)
        st = d.status()
        elapsed = time.monotonic() - t0
    finally:
        if own:
            d.stop()
    per = [out.get(k, {"sent": 0, "answered": 0, "ok": 0}) for k in range(clients)]
    problems = out.get("problems", [])
    sent = sum(p["sent"] for p in per)
    answered = sum(p["answered"] for p in per)
    report = {"mode": "daemon", "reconfigs": pins, "epochs_advanced": st["epoch"] - st0["epoch"], "clients": clients,
              "frames": sent, "answered": answered, "ok_replies": sum(p["ok"] for p in per), "lost": sent - answered,
              "restarts": st["restarts"] - st0["restarts"], "seconds": round(elapsed, 1), "failures": problems[:20]}
    if report["restarts"]:
        problems.append(f"{report['restarts']} pipeline restarts")
    report["ok"] = not problems and report["lost"] == 0 and report["ok_replies"] == sent
    return report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", choices=["pipeline", "daemon"], default="pipeline")
    ap.add_argument("--reconfigs", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--clients", type=int, default=4, help="daemon mode: clients sending meanwhile")
    ap.add_argument("--pin-every", type=float, default=0.05, help="daemon mode: mean seconds between pins")
    ap.add_argument("--workdir", help="sockets, state and logs (default: a temp dir)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    workdir = Path(args.workdir) if args.workdir else None
    if args.mode == "pipeline":
        report = torture_pipeline(args.reconfigs, seed=args.seed, workdir=workdir, log=log)
    else:
        report = torture_daemon(args.reconfigs, seed=args.seed, clients=args.clients, pin_every=args.pin_every,
                                workdir=workdir, log=log)
    return print_report(report, args.json)


if __name__ == "__main__":
    sys.exit(main())
