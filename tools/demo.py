#!/usr/bin/env python3
"""The main job, end to end on this machine (README: `tools/dev demo`).

1. makes an emulated big.LITTLE platform of this machine's cores (a fake cpufreq tree in a temp dir:
   the `little` cluster runs at half speed);
2. starts the daemon (`tunerd serve`) on a zoo model with it, on ipc sockets in the temp dir;
3. feeds it with the load generator (closed loop, several clients);
4. shows `tunerctl watch` until the tuner has converged;
5. lowers the emulated `big` cluster's frequency to 60% (what DVFS/thermal throttling does) and shows
   the daemon notice it and retune, again until converged;
6. prints the final status, a few lines of its Prometheus metrics, draws the convergence plot
   (`tunerctl history --plot`), and stops everything (SIGTERM: the daemon finishes frames in flight).

After each convergence it says what tuning earned: the running config's measured fps over the best
single-cluster config measured (status "gain"). The daemon runs on the backend `auto` picks
(onnxruntime where installed, else numpy).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import importlib.util
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


def emulate_spec() -> str:
    mine = cpus()
    half = max(1, len(mine) // 2)
    big, little = mine[:half], mine[half:] or mine[:1]
    fmt = lambda cs: ",".join(map(str, cs))  # noqa: E731
    if big == little:
        return f"emulate:big={fmt(big)}@1.0"
    return f"emulate:big={fmt(big)}@1.0,little={fmt(little)}@0.5"


def run_ctl(control: str, *args: str, timeout: float | None = None) -> int:
    try:
        return subprocess.run([str(BIN / "tunerctl"), "--control", control, *args], timeout=timeout).returncode
    except subprocess.TimeoutExpired:
        print(f"demo: tunerctl {args[0]} gave up after {timeout:.0f} s", flush=True)
        return 1


def status(control: str) -> dict:
    import json
    out = subprocess.run([str(BIN / "tunerctl"), "--control", control, "status", "--json"],
                         capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


def say_gain(control: str, when: str) -> None:
    st = status(control)
    gain = st.get("gain") or {}
    if isinstance(gain.get("ratio"), (int, float)):
        base = gain.get("single_cluster") or {}
        print(f"== {when}: {gain['config']} at {gain['fps']:.1f} fps on {st.get('backend')}, "
              f"{gain['ratio']:.2f}x the best single-cluster config measured ({base.get('config')}, "
              f"{base.get('fps', 0):.1f} fps)", flush=True)
    else:
        print(f"== {when}: no single-cluster figure measured yet", flush=True)


def has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def show_metrics(url: str | None) -> None:
    """A few lines of what Prometheus would scrape (docs/metrics.md has them all)."""
    if not url:
        return
    print(f"\n== Prometheus metrics at {url} (a few of them)", flush=True)
    wanted = ("tunerd_frames_served_total", "tunerd_fps ", "tunerd_best_fps", "tunerd_gain_ratio",
              "tunerd_retunes_total", "tunerd_cluster_frequency_cap_hertz", 'tunerd_request_latency_seconds_count')
    try:
        with urllib.request.urlopen(url, timeout=10) as reply:
            lines = reply.read().decode().splitlines()
    except OSError as err:
        print(f"demo: cannot scrape {url}: {err}")
        return
    for line in lines:
        if line.startswith(wanted) or ('tuner_state="' in line and line.endswith(" 1.0")):
            print("  " + line)


def wait_for_daemon(control: str, daemon: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.poll() is not None:
            raise SystemExit(f"demo: the daemon exited with status {daemon.returncode} (see its log above)")
        if subprocess.run([str(BIN / "tunerctl"), "--control", control, "--timeout", "1", "version"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0:
            return
        time.sleep(0.5)
    raise SystemExit("demo: the daemon did not come up in time")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:squeezenet", help="model to serve (default zoo:squeezenet)")
    ap.add_argument("--input-size", type=int, default=112, help="input height = width (default 112)")
    ap.add_argument("--clients", type=int, default=4, help="load generator clients (default 4)")
    ap.add_argument("--budget", type=int, default=30, help="tuner evaluations per search (default 30)")
    ap.add_argument("--throttle", type=float, default=0.6, help="big cluster frequency after the change (0.6)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for each convergence")
    ap.add_argument("--plot", default=str(Path(tempfile.gettempdir()) / "tunerd-demo-convergence.png"),
                    help="where the convergence plot goes (default: %(default)s)")
    args = ap.parse_args(argv)

    from tunerd.platform.fakesysfs import make_emulated_tree, set_emulated_freq
    from tunerd.platform.spec import parse_platform_spec

    spec = emulate_spec()
    with tempfile.TemporaryDirectory(prefix="tunerd-demo-") as tmp:
        tmp = Path(tmp)
        sysfs = make_emulated_tree(spec, tmp / "fs")
        frames, control = f"ipc://{tmp}/frames.sock", f"ipc://{tmp}/control.sock"
        print(f"== platform {spec} (emulated cpufreq tree in {sysfs})", flush=True)
        daemon = subprocess.Popen([str(BIN / "tunerd"), "serve", "--model", args.model, "--input-size",
                                   str(args.input_size), "--platform", spec, "--sysfs-root", str(sysfs),
                                   "--frames", frames, "--control", control, "--state-dir", str(tmp / "state"),
                                   "--budget", str(args.budget), "--log-level", "info",
                                   *(["--metrics", "127.0.0.1:0"] if has("prometheus_client") else [])])
        loadgen = None
        try:
            print("== starting the daemon (first start calibrates this machine for the hints)", flush=True)
            wait_for_daemon(control, daemon, timeout=600)
            print(f"== feeding it: {args.clients} clients, closed loop, on the daemon's own CPUs", flush=True)
            loadgen = subprocess.Popen([sys.executable, str(Path(__file__).parent / "loadgen.py"), "--frames",
                                        frames, "--control", control, "--clients", str(args.clients),
                                        "--duration", str(4 * args.timeout), "--colocate"],
                                       stdout=subprocess.DEVNULL)
            print("== tunerctl watch (until converged)", flush=True)
            run_ctl(control, "watch", "--interval", "1", timeout=args.timeout)
            run_ctl(control, "status")
            say_gain(control, "converged")
            retunes = status(control).get("retunes", 0)
            big = parse_platform_spec(spec).clusters
            first_big = next(c for c in big if c.name == "big").cpus[0]
            khz = int(2_000_000 * args.throttle)
            print(f"\n== throttling: big cluster to {args.throttle:.0%} ({khz} kHz) — the daemon should retune",
                  flush=True)
            set_emulated_freq(sysfs, first_big, khz)
            deadline = time.monotonic() + 30    # the monitor debounces changes for a couple of seconds
            while status(control).get("retunes", 0) <= retunes and time.monotonic() < deadline:
                time.sleep(0.5)
            run_ctl(control, "watch", "--interval", "1", timeout=args.timeout)
            run_ctl(control, "status")
            say_gain(control, "retuned")
            run_ctl(control, "history", "--last", "10")
            show_metrics(status(control).get("metrics"))
            if has("matplotlib"):
                print("\n== tunerctl history --plot", flush=True)
                run_ctl(control, "history", "--plot", args.plot)
            else:
                print("== (no convergence plot: matplotlib is not installed; pip install 'tunerd[plot]')")
        finally:
            if loadgen is not None:
                loadgen.terminate()
                loadgen.wait(10)
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
        print(f"== done (daemon exit status {daemon.returncode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
