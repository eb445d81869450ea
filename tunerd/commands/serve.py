"""`tunerd serve`: the daemon (what systemd runs)."""
from __future__ import annotations

import sys

from ..daemon.config import DEFAULT_CONFIG_FILE, load_config
from ..daemon.journal import configure_logging


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the daemon: serve frames, tune the pipeline online",
        description="Run the tunerd daemon. Settings come from the config file (default "
                    f"{DEFAULT_CONFIG_FILE}, if it exists); the flags below override it.")
    p.add_argument("--config", metavar="FILE", help=f"TOML config file (default {DEFAULT_CONFIG_FILE} if present)")
    p.add_argument("--model", metavar="SRC", help="zoo:NAME or a path to an .onnx file")
    p.add_argument("--input-size", type=int, metavar="N", help="input height = width (default: the model's)")
    p.add_argument("--backend", choices=["auto", "numpy", "onnxruntime"],
                   help="what runs the stages: onnxruntime, numpy (no dependencies) or auto (onnxruntime "
                        "when installed; the default)")
    p.add_argument("--platform", metavar="SPEC", help="auto | emulate:NAME=CPUS@SPEED,...")
    p.add_argument("--frames", metavar="ADDR", help="frames socket, ipc://PATH or tcp://HOST:PORT")
    p.add_argument("--control", metavar="ADDR", help="control socket (tunerctl), ipc://PATH or tcp://HOST:PORT")
    p.add_argument("--sysfs-root", metavar="DIR", help="sysfs root (default /sys; a fake tree in tests)")
    p.add_argument("--state-dir", metavar="DIR", help="where tuned results persist (default /var/lib/tunerd)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log verbosity")
    p.add_argument("--budget", type=int, metavar="N", help="tuner: evaluations per search")
    p.add_argument("--seed", type=int, metavar="N", help="tuner: random seed")
    p.add_argument("--pin", metavar="CONFIG", help="serve this pipeline config, no tuning")
    p.add_argument("--metrics", metavar="HOST:PORT",
                   help="serve Prometheus metrics on http://HOST:PORT/metrics (e.g. 127.0.0.1:9464; port 0: "
                        "any free port, see `tunerctl status --json`); needs tunerd[metrics]")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..daemon.server import Daemon
    path = args.config or DEFAULT_CONFIG_FILE
    overrides = {
        "source": args.model, "input_size": args.input_size, "backend": args.backend, "spec": args.platform, "frames": args.frames,
        "control": args.control, "sysfs_root": args.sysfs_root, "state_dir": args.state_dir,
        "log_level": args.log_level, "budget": args.budget, "seed": args.seed, "pin": args.pin,
        "metrics_listen": args.metrics,
    }
    cfg = load_config(path, overrides, required=bool(args.config))
    configure_logging(cfg.log_level, sys.stderr)     # priorities when stderr is the journal
    daemon = Daemon(cfg, config_path=path, overrides=overrides)   # SIGHUP applies the flags again
    try:
        daemon.start()
    except BaseException:
        daemon.close()
        raise
    return daemon.run()
