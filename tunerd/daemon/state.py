"""Persistence: what the tuner learned, kept in the state directory across restarts.

Tuned results are keyed by model hash, platform signature and frequency state, so a restart, or a
return to a frequency state seen before, starts from the stored best config (and verifies it)
instead of searching from scratch. Every write is atomic: temp file, fsync, rename, fsync of the
directory; a crash mid-write leaves the previous good file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

from ..files import atomic_write_text

log = logging.getLogger(__name__)

FORMAT = 1


def atomic_write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))


def read_json(path: Path) -> dict | None:
    """The file's JSON object, or None when missing or unreadable (logged, never raised)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        log.warning("ignoring unreadable state file %s: %s", path, err)
        return None
    return data if isinstance(data, dict) else None


def platform_signature(platform) -> str:
    """Clusters by name, core type and CPUs: what makes configs of one platform valid on another."""
    parts = [f"{c.name}:{c.core_type}:{','.join(map(str, c.cpus))}" for c in platform.clusters]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def sweep_temp_files(directory: Path) -> int:
    """Remove the temp files of writers that died mid-write (``.NAME.PID.tmp`` of a dead PID)."""
    import psutil
    removed = 0
    for tmp in directory.glob("*/.*.tmp"):
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
        except ValueError:
            continue
        if pid != os.getpid() and not psutil.pid_exists(pid):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


class StateStore:
    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        if self.dir.is_dir() and (removed := sweep_temp_files(self.dir)):
            log.info("removed %d temp files left by interrupted state writes", removed)

    def _key(self, model_hash: str, platform_sig: str, freq_state: str) -> str:
        return hashlib.sha256(f"{model_hash}|{platform_sig}|{freq_state}".encode()).hexdigest()[:24]

    def tuned_path(self, model_hash: str, platform_sig: str, freq_state: str) -> Path:
        return self.dir / "tuned" / f"{self._key(model_hash, platform_sig, freq_state)}.json"

    def save_tuned(self, model_hash: str, platform_sig: str, freq_state: str, *, config: str, fps: float,
                   extra: dict | None = None) -> Path:
        path = self.tuned_path(model_hash, platform_sig, freq_state)
        atomic_write_json(path, {"format": FORMAT, "model_hash": model_hash, "platform": platform_sig,
                                 "freq_state": freq_state, "config": config, "fps": fps, **(extra or {})})
        return path

    def load_tuned(self, model_hash: str, platform_sig: str, freq_state: str) -> dict | None:
        data = read_json(self.tuned_path(model_hash, platform_sig, freq_state))
        if not data or data.get("format") != FORMAT or data.get("model_hash") != model_hash:
            return None
        if not isinstance(data.get("config"), str):
            return None
        return data

    def checkpoint_path(self, model_hash: str, platform_sig: str) -> Path:
        return self.dir / "checkpoints" / f"{self._key(model_hash, platform_sig, '')}.json"

    def save_checkpoint(self, model_hash: str, platform_sig: str, state: dict) -> None:
        atomic_write_json(self.checkpoint_path(model_hash, platform_sig), {"format": FORMAT, "tuner": state})

    def load_checkpoint(self, model_hash: str, platform_sig: str) -> dict | None:
        data = read_json(self.checkpoint_path(model_hash, platform_sig))
        return data.get("tuner") if data and data.get("format") == FORMAT else None
