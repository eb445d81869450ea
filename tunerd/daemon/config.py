"""The daemon's configuration: defaults < TOML file (``/etc/tunerd/tunerd.toml``) < command-line flags.

The file's sections and keys are those of ``systemd/tunerd.toml`` (the annotated example); an
unknown section or key is an error (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..errors import ConfigError

DEFAULT_CONFIG_FILE = "/etc/tunerd/tunerd.toml"


@dataclass
class DaemonConfig:
    # [daemon]
    frames: str = "ipc:///run/tunerd/frames.sock"
    control: str = "ipc:///run/tunerd/control.sock"
    state_dir: str = "/var/lib/tunerd"
    log_level: str = "info"
    allow_remote: bool = False
    # [model]
    source: str = "zoo:mobilenet"
    input_size: int | None = None
    backend: str = "auto"
    # [platform]
    spec: str = "auto"
    sysfs_root: str = "/sys"
    poll_interval_s: float = 1.0
    place_self: bool = True
    # [tuner]
    budget: int = 60
    seed: int = 0
    population: int = 16
    window_frames: int = 40
    # NOTE: a window of a few fast frames samples one moment; where the speed drifts over fractions
    # of a second (other processes, a VM's host) its figure moves with it (tests/test_live.py)
    window_min_seconds: float = 0.25
    drift_threshold: float = 0.15
    pin: str | None = None
    # [limits]
    queue_depth: int = 64
    max_message_bytes: int = 64 * 2**20
    max_in_flight: int = 8
    max_client_frames: int = 32
    # [security]
    curve_secret_key_file: str | None = None
    curve_client_keys_dir: str | None = None
    # [metrics] listen: Prometheus /metrics on HOST:PORT (None: off)
    metrics_listen: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


SECTIONS = {
    "daemon": ("frames", "control", "state_dir", "log_level", "allow_remote"),
    "model": ("source", "input_size", "backend"),
    "platform": ("spec", "sysfs_root", "poll_interval_s", "place_self"),
    "tuner": ("budget", "seed", "population", "window_frames", "window_min_seconds", "drift_threshold",
              "pin"),
    "limits": ("queue_depth", "max_message_bytes", "max_in_flight", "max_client_frames"),
    "security": ("curve_secret_key_file", "curve_client_keys_dir"),
    "metrics": ("listen",),
}
# NOTE: a key whose field has another name (the file says [metrics] listen; the daemon, metrics_listen)
FIELD_OF = {("metrics", "listen"): "metrics_listen"}
_TYPES = {f.name: f.type for f in fields(DaemonConfig)}
_TYPES.update({key: _TYPES[name] for (_, key), name in FIELD_OF.items()})


def _check_type(key: str, value):
    want = _TYPES[key]
    ok = {"int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, str), "bool": isinstance(value, bool)}
    kinds = [k for k in ("int", "float", "str", "bool") if k in want]
    if not any(ok[k] for k in kinds):
        raise ConfigError(f"config key {key!r} must be {' or '.join(kinds)}, got {value!r}")
    return value


def load_config(path: str | None, overrides: dict | None = None, *, required: bool = False) -> DaemonConfig:
    """Read ``path`` (missing is fine unless ``required``), then apply non-None ``overrides``."""
    cfg = DaemonConfig()
    if path:
        p = Path(path)
        if p.exists():
            try:
                data = tomllib.loads(p.read_text())
            except (OSError, tomllib.TOMLDecodeError) as err:
                raise ConfigError(f"cannot read config {p}: {err}") from err
            for section, values in data.items():
                if section not in SECTIONS or not isinstance(values, dict):
                    raise ConfigError(f"{p}: unknown section [{section}] (known: {', '.join(SECTIONS)})")
                for key, value in values.items():
                    if key not in SECTIONS[section]:
                        raise ConfigError(f"{p}: unknown key {key!r} in [{section}] "
                                          f"(known: {', '.join(SECTIONS[section])})")
                    value = _check_type(key, value)
                    # NOTE: TOML has no null: 0 / "" stand for "not set" (the model's own size, no
                    # pin, no CURVE) where a key may be unset; elsewhere "" is a mistake
                    if value == "" and "None" not in _TYPES[key]:
                        raise ConfigError(f"{p}: {key} in [{section}] must not be empty")
                    if (key == "input_size" and value == 0) or value == "":
                        value = None
                    setattr(cfg, FIELD_OF.get((section, key), key), value)
        elif required:
            raise ConfigError(f"config file {p} does not exist")
    for key, value in (overrides or {}).items():
        if value is not None:
            setattr(cfg, key, value)
    validate(cfg)
    return cfg


def validate(cfg: DaemonConfig) -> None:
    if cfg.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"log_level must be debug, info, warning or error, got {cfg.log_level!r}")
    for key in ("queue_depth", "max_message_bytes", "max_in_flight", "max_client_frames", "budget", "population",
                "window_frames"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be >= 1, got {getattr(cfg, key)}")
    if not 0 <= cfg.window_min_seconds <= 60:
        raise ConfigError(f"window_min_seconds must be between 0 and 60, got {cfg.window_min_seconds}")
    if not 0 < cfg.drift_threshold < 1:
        raise ConfigError(f"drift_threshold must be between 0 and 1, got {cfg.drift_threshold}")
    if cfg.poll_interval_s <= 0:
        raise ConfigError(f"poll_interval_s must be > 0, got {cfg.poll_interval_s}")
    if cfg.input_size is not None and cfg.input_size < 8:
        raise ConfigError(f"input_size must be >= 8, got {cfg.input_size}")
    if cfg.backend not in ("auto", "numpy", "onnxruntime"):
        raise ConfigError(f"backend must be auto, numpy or onnxruntime, got {cfg.backend!r}")
    if cfg.frames == cfg.control:
        raise ConfigError(f"frames and control must be two addresses, both are {cfg.frames!r}")
    if cfg.metrics_listen is not None:
        from .metrics import parse_listen
        parse_listen(cfg.metrics_listen)
        if not cfg.allow_remote and not is_loopback_tcp(f"tcp://{cfg.metrics_listen}"):
            raise ConfigError(f"metrics address {cfg.metrics_listen} is reachable from other hosts; set [daemon] "
                              "allow_remote = true to serve it there, or listen on 127.0.0.1:PORT")
    for key in ("frames", "control"):
        addr = getattr(cfg, key)
        if not addr.startswith(("ipc://", "tcp://", "inproc://")):
            raise ConfigError(f"{key} address must be ipc://PATH or tcp://HOST:PORT, got {addr!r}")
        if addr.startswith("tcp://") and not cfg.allow_remote and not is_loopback_tcp(addr):
            raise ConfigError(f"{key} address {addr} is reachable from other hosts; set [daemon] allow_remote = "
                              "true to serve them (with [security] CURVE on), or bind tcp://127.0.0.1:PORT")


def is_loopback_tcp(addr: str) -> bool:
    """Whether a ``tcp://HOST:PORT`` bind address listens on loopback only. ``*``, ``0.0.0.0``,
    an interface name or a hostname other than localhost count as remote (a name may resolve or
    name an interface elsewhere; only literal loopback addresses are sure)."""
    host = addr[len("tcp://"):].rpartition(":")[0]
    if ";" in host:                 # zmq's "tcp://SOURCE;HOST:PORT" form is for connect, not bind
        return False
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
