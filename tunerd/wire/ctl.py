"""`tunerctl`: the operator's view of a running tunerd, over its control socket.

Exit codes follow the LSB init-script convention: 0 ok, 1 error, 2 usage, 3 daemon not running,
4 protocol version mismatch, 130 interrupted. Errors are one line on stderr, never a traceback.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import sys
import time
from typing import Any, Sequence, TextIO

import zmq

from ..version import __version__
from . import protocol
from .client import (ClientError, ControlClient, DaemonNotRunning, RemoteError, VersionMismatch,
                     default_control_address, load_curve_keypair)
from ..errors import TunerdError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_RUNNING, EXIT_VERSION, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
DONE_STATES = ("converged", "pinned")   # tunerd.tuning.states.CONVERGED, PINNED
SPARKS = "▁▂▃▄▅▆▇█"
ASCII_SPARKS = "_.-:=+*#"
CLEAR = "\x1b[H\x1b[2J"

EPILOG = f"""\
control address: --control, else --instance NAME (ipc:///run/tunerd/NAME/control.sock), else
$TUNERD_CONTROL, else {protocol.DEFAULT_CONTROL_ADDRESS}. Addresses are tcp://HOST:PORT or ipc://PATH.
The ipc socket is group-accessible: run as root or as a member of the group tunerd.

exit status: 0 ok, 1 error (one line on stderr), 2 usage, 3 tunerd not running,
4 protocol version mismatch, 130 interrupted.

examples:
  tunerctl status              state, configs, fps, search progress
  tunerctl watch               follow the tuner until it converges
  tunerctl pin '0-9@big:4 | 10-17@little:4'
  tunerctl history --plot convergence.png
  tunerctl --control tcp://127.0.0.1:5556 status --json
"""


# --- formatting (pure) -----------------------------------------------------------------------------
def sparkline(values: Sequence[float], width: int = 40, *, ascii: bool = False) -> str:
    """One character per value (values bucketed by max to at most ``width``), low to high."""
    values = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not values:
        return ""
    if len(values) > width:
        step = len(values) / width
        values = [max(values[int(i * step):max(int((i + 1) * step), int(i * step) + 1)]) for i in range(width)]
    chars = ASCII_SPARKS if ascii else SPARKS
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return chars[len(chars) // 2] * len(values)
    return "".join(chars[min(len(chars) - 1, int((v - lo) / (hi - lo) * len(chars)))] for v in values)


def compact_cpus(cpus: Any) -> str:
    """[0, 1, 2, 3, 6] -> '0-3,6' (the kernel's cpulist format)."""
    if not isinstance(cpus, list) or not all(isinstance(c, int) for c in cpus):
        return str(cpus)
    out, cpus = [], sorted(cpus)
    i = 0
    while i < len(cpus):
        j = i
        while j + 1 < len(cpus) and cpus[j + 1] == cpus[j] + 1:
            j += 1
        out.append(str(cpus[i]) if i == j else f"{cpus[i]}-{cpus[j]}")
        i = j + 1
    return ",".join(out)


def duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)):
        return "-"
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    return f"{d}d {h}h {m:02d}m" if d else f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"


def _fps(value: Any) -> str:
    return f"{value:.1f} fps" if isinstance(value, (int, float)) and not isinstance(value, bool) else "- fps"


def _platform_lines(platform: Any) -> list[str]:
    if not isinstance(platform, dict):
        return [str(platform) if platform else "-"]
    spec, source = platform.get("spec"), platform.get("source", "?")
    lines = [str(spec) if spec and str(spec).startswith(str(source)) else
             f"{source} ({spec})" if spec else str(source)]
    for cluster in platform.get("clusters") or []:
        if not isinstance(cluster, dict):
            continue
        extra = [str(cluster[k]) for k in ("core_type",) if cluster.get(k)]
        if isinstance(cluster.get("speed"), (int, float)):
            extra.append(f"speed {cluster['speed']:.2f}")
        if isinstance(cluster.get("cur_khz"), (int, float)):
            extra.append(f"{cluster['cur_khz'] / 1000:.0f} MHz")
        if cluster.get("throttled"):
            extra.append("throttled")
        lines.append(f"{cluster.get('name', '?')}: cpus {compact_cpus(cluster.get('cpus'))}"
                     + (f" ({', '.join(extra)})" if extra else ""))
    zones = [z for z in platform.get("thermal") or [] if isinstance(z, dict)]
    temps = [f"{z.get('name') or z.get('type', '?')} {z['temp_c']:.0f} C" for z in zones
             if isinstance(z.get("temp_c"), (int, float))]
    if temps:
        lines.append("thermal: " + ", ".join(temps))
    return lines


def _model_text(model: Any) -> str:
    if not isinstance(model, dict):
        return str(model) if model else "-"
    name, source = model.get("name"), model.get("source")
    text = str(name or source or "?")
    extra = [str(source)] if source and source != name else []
    if isinstance(model.get("units"), int):
        extra.append(f"{model['units']} units")
    return text + (f" ({', '.join(extra)})" if extra else "")


def render_status(status: dict, *, ascii: bool = False) -> str:
    """The human form of a status map (every field optional except what is shown as '-')."""
    state = status.get("state", "?")
    best = status.get("best") if isinstance(status.get("best"), dict) else {}
    head = f"tunerd {status.get('version', '')}".rstrip() + f": {state}"
    if status.get("pinned") and state != "pinned":
        head += " (pinned)"
    rows: list[tuple[str, str]] = []
    for i, line in enumerate(_platform_lines(status.get("platform"))):
        rows.append(("platform" if i == 0 else "", line))
    model = _model_text(status.get("model"))
    shape = status.get("input_shape")
    if isinstance(shape, list) and shape:
        model += f"  input {'x'.join(str(d) for d in shape)}"
    if isinstance(status.get("backend"), str):
        model += f"  on {status['backend']}"
    rows.append(("model", model))
    epoch = status.get("epoch")
    rows.append(("config", f"{status.get('config') or '-'}   {_fps(status.get('fps'))}"
                 + (f"  (epoch {epoch})" if epoch is not None else "")))
    rows.append(("best", f"{best.get('config') or '-'}   {_fps(best.get('fps'))}"))
    gain = _gain_text(status.get("gain"))
    if gain:
        rows.append(("gain", gain))
    retunes = status.get("retunes", 0)
    rows.append(("search", f"generation {status.get('generation', '-')}, {status.get('evaluations', 0)} evaluations, "
                           f"{retunes} retune{'' if retunes == 1 else 's'}"))
    served = status.get("frames_served")
    host = status.get("host_cpus")
    rows.append(("served", (f"{served:,} frames" if isinstance(served, int) else "-")
                 + (f"  (daemon on cpus {compact_cpus(host)})" if isinstance(host, list) and host else "")))
    history = status.get("history_fps") or []
    if history:
        fps = [v for v in history if isinstance(v, (int, float))]
        line = sparkline(fps, ascii=ascii)
        if fps:
            # NOTE: the history spans retunes (a throttled board measures lower from then on): say
            # first, highest and latest rather than a range that reads as this episode's
            line += (f"  first {fps[0]:.1f}, highest {max(fps):.1f}, latest {fps[-1]:.1f} fps "
                     f"over the last {len(fps)} evaluations")
        rows.append(("progress", line))
    rows.append(("uptime", duration(status.get("uptime_s"))))
    return "\n".join([head] + [f"  {label:<9} {text}" for label, text in rows])


def _gain_text(gain) -> str | None:
    """The running config's measured fps over the best single-cluster config measured, e.g.
    ``1.42x over 0-49@big:1 (18.9 fps)``; None when the daemon has no such figure yet."""
    if not isinstance(gain, dict) or not isinstance(gain.get("ratio"), (int, float)):
        return None
    base = gain.get("single_cluster") if isinstance(gain.get("single_cluster"), dict) else {}
    return (f"{gain['ratio']:.2f}x over the best single cluster, {base.get('config') or '-'} "
            f"({_fps(base.get('fps'))})")


def status_line(status: dict) -> str:
    """One line for `watch` when stdout is not a terminal."""
    best = status.get("best") if isinstance(status.get("best"), dict) else {}
    return (f"{time.strftime('%H:%M:%S')} {status.get('state', '?')} gen={status.get('generation', '-')} "
            f"evals={status.get('evaluations', '-')} {_fps(status.get('fps'))} best={_fps(best.get('fps'))} "
            f"config={status.get('config') or '-'}")


def render_history(evaluations: list) -> str:
    rows = [("#", "time", "state", "fps", "config")]
    for i, ev in enumerate(evaluations):
        if not isinstance(ev, dict):
            continue
        when = ev.get("time")
        when = _dt.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, (int, float)) else "-"
        fps = ev.get("fps")
        rows.append((str(ev.get("index", i)), when, str(ev.get("state", "-")),
                     f"{fps:.2f}" if isinstance(fps, (int, float)) else "-", str(ev.get("config", "-"))))
    widths = [max(len(r[c]) for r in rows) for c in range(4)]
    return "\n".join(f"{r[0]:>{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]:>{widths[3]}}  {r[4]}"
                     for r in rows)


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


def _json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str, ensure_ascii=False)


# --- commands ------------------------------------------------------------------------------------
def cmd_status(ctl: ControlClient, args, out: TextIO) -> int:
    status = ctl.call(protocol.STATUS)
    if args.json:
        print(_json(status), file=out)
    else:
        print(render_status(status, ascii=not _can_encode(out, SPARKS)), file=out)
    return EXIT_OK


def cmd_watch(ctl: ControlClient, args, out: TextIO) -> int:
    tty = out.isatty()
    ascii = not _can_encode(out, SPARKS)
    last = None
    while True:
        status = ctl.call(protocol.STATUS)
        if tty:
            out.write(CLEAR + render_status(status, ascii=ascii) + "\n\n(watching; Ctrl-C to stop)\n")
        else:
            line = status_line(status)
            if line.split(" ", 1)[1] != last:   # plain lines (logs, pipes): only on change
                out.write(line + "\n")
                last = line.split(" ", 1)[1]
        out.flush()
        if status.get("state") in DONE_STATES:
            return EXIT_OK
        time.sleep(args.interval)   # NOTE: pacing the polls, not waiting for a socket


def cmd_retune(ctl: ControlClient, args, out: TextIO) -> int:
    reply = ctl.call(protocol.RETUNE)
    print(f"retune requested; state {reply.get('state', '?')}", file=out)
    return EXIT_OK


def cmd_pin(ctl: ControlClient, args, out: TextIO) -> int:
    reply = ctl.call(protocol.PIN, config=args.config)
    epoch = reply.get("epoch")
    print(f"pinned {reply.get('config', args.config)}" + (f" (epoch {epoch})" if epoch is not None else ""), file=out)
    return EXIT_OK


def cmd_unpin(ctl: ControlClient, args, out: TextIO) -> int:
    reply = ctl.call(protocol.UNPIN)
    print(f"unpinned; state {reply.get('state', '?')}", file=out)
    return EXIT_OK


def cmd_history(ctl: ControlClient, args, out: TextIO) -> int:
    request = {"limit": args.last} if args.last else {}
    reply = ctl.call(protocol.HISTORY, **request)
    # NOTE: the list is `history`; `evaluations` is accepted from early daemons (docs/protocol.md)
    evaluations = reply.get("history")
    if not isinstance(evaluations, list):
        evaluations = reply.get("evaluations") if isinstance(reply.get("evaluations"), list) else []
    if args.last:
        evaluations = evaluations[-args.last:]
    plot = getattr(args, "plot", None)
    if plot:
        from .convergence_plot import plot_convergence, plural
        drawn = plot_convergence({**reply, "history": evaluations}, plot)
        print(f"wrote {drawn['path']}: {plural(drawn['evaluations'], 'evaluation')}, "
              f"{plural(drawn['retunes'], 'retune')}", file=out)
    elif args.json:
        print(_json({**reply, "history": evaluations}), file=out)
    else:
        print(render_history(evaluations), file=out)
    return EXIT_OK


def cmd_version(ctl: ControlClient, args, out: TextIO) -> int:
    hello = ctl.hello()
    print(f"tunerctl {__version__} (protocol {protocol.PROTOCOL_VERSION}); "
          f"tunerd {hello.get('version', '?')} (protocol {hello.get('protocol')}) on {ctl.address}", file=out)
    return EXIT_OK


# --- parser and entry point ------------------------------------------------------------------------
def _address(value: str) -> str:
    if not value.startswith(("tcp://", "ipc://", "inproc://")) or len(value.split("://", 1)[1]) == 0:
        raise argparse.ArgumentTypeError(f"not a tcp://HOST:PORT or ipc://PATH address: {value!r}")
    return value


def _positive(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = -1
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {value!r}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tunerctl", description="Watch and steer a running tunerd over its control socket.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--control", metavar="ADDR", type=_address, help="control socket address")
    parser.add_argument("-i", "--instance", metavar="NAME",
                        help="the tunerd@NAME instance (ipc:///run/tunerd/NAME/control.sock)")
    parser.add_argument("--timeout", metavar="S", type=_positive, default=5.0,
                        help="seconds to wait for an answer (default 5)")
    parser.add_argument("--curve-server-key", metavar="KEY|FILE",
                        help="the daemon's CURVE public key (z85 or certificate file), for tcp with CURVE on")
    parser.add_argument("--curve-client-cert", metavar="FILE",
                        help="this client's CURVE certificate (secret) file, if the daemon allows listed keys only")
    parser.add_argument("--version", action="version", version=f"tunerctl {__version__} (protocol {protocol.PROTOCOL_VERSION})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("status", help="state, configs, fps and search progress")
    p.add_argument("--json", action="store_true", help="the daemon's status map as JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("watch", help="redraw status until converged or pinned (Ctrl-C stops)")
    p.add_argument("--interval", metavar="S", type=_positive, default=1.0, help="seconds between polls (default 1)")
    p.set_defaults(func=cmd_watch)
    p = sub.add_parser("retune", help="start a new search, warm-started from what the tuner knows")
    p.set_defaults(func=cmd_retune)
    p = sub.add_parser("pin", help="serve CONFIG and stop tuning, e.g. '0-9@big:4 | 10-17@little:4'")
    p.add_argument("config", metavar="CONFIG", help="a pipeline config in canonical text form")
    p.set_defaults(func=cmd_pin)
    p = sub.add_parser("unpin", help="resume tuning")
    p.set_defaults(func=cmd_unpin)
    p = sub.add_parser("history", help="the evaluations so far: index, time, state, fps, config")
    p.add_argument("--json", action="store_true", help="as JSON")
    p.add_argument("--last", metavar="N", type=int, default=0, help="only the last N evaluations")
    p.add_argument("--plot", metavar="FILE.png",
                   help="draw fps per evaluation and over time, best so far, retunes and the single-cluster "
                        "baseline into FILE (needs tunerd[plot]: matplotlib)")
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("version", help="versions of tunerctl and the daemon")
    p.set_defaults(func=cmd_version)
    return parser


def control_address(args) -> str:
    if args.control:
        return args.control
    if args.instance:
        return f"ipc:///run/tunerd/{args.instance}/control.sock"
    return default_control_address()


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name = f"tunerctl {args.command}"
    try:
        keypair = load_curve_keypair(args.curve_client_cert) if args.curve_client_cert else None
        with ControlClient(control_address(args), args.timeout, curve_server_key=args.curve_server_key,
                           curve_keypair=keypair) as ctl:
            return args.func(ctl, args, out)
    except DaemonNotRunning as err:
        print(err, file=sys.stderr)
        return EXIT_NOT_RUNNING
    except VersionMismatch as err:
        print(f"{name}: {err}", file=sys.stderr)
        return EXIT_VERSION
    except (RemoteError, ClientError, TunerdError) as err:
        print(f"{name}: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:   # `tunerctl history | head`: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (OSError, ValueError, zmq.ZMQError) as err:   # unreadable certificate, unusable address
        print(f"{name}: {err}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
