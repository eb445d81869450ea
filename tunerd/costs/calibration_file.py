"""The calibration file: a platform's fitted coefficients per core type, with the raw samples they
were fitted on, the backend that ran them and where and when they were measured (schema
``tunerd-calibration/1``).

``tunerd calibrate`` keeps it in the cache under the platform's key
(:func:`tunerd.platform.identity.platform_key`) and the backend's name, where ``tunerd hints
--platform`` and the daemon look. ``"backend"`` was added without a new schema version: a file
without it was measured before backends existed, on numpy's kernels, and reads as ``numpy``.
"""
from __future__ import annotations

import json
import os
import platform as _pyplatform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import HintsError
from ..files import atomic_write_text, load_json
from ..platform.identity import platform_key

SCHEMA = "tunerd-calibration/1"
DEFAULT_BACKEND = "numpy"          # what a file without "backend" was measured on
CALIBRATED_BACKENDS = ("numpy", "onnxruntime")


@dataclass
class Calibration:
    coefficients: dict[str, Any]          # core type -> CoreCoeffs
    platform: dict                        # {"spec", "source", "clusters": [{name, core_type, cpus, speed}]}
    date: str
    machine: dict
    quick: bool = False
    fit: dict = field(default_factory=dict)       # core type -> fit quality
    samples: list = field(default_factory=list)   # raw measurements (for refits and plots)
    path: str | None = None
    schema: str = SCHEMA
    backend: str = DEFAULT_BACKEND                # the backend whose kernels the sweep ran on

    def to_dict(self) -> dict:
        return {"schema": self.schema, "backend": self.backend, "date": self.date, "quick": self.quick,
                "platform": self.platform, "machine": self.machine,
                "coefficients": {t: c.to_dict() for t, c in self.coefficients.items()},
                "fit": self.fit, "samples": self.samples}

    @classmethod
    def from_dict(cls, data: Any, *, source: str = "calibration") -> "Calibration":
        from .costmodel import CoreCoeffs
        if not isinstance(data, Mapping):
            raise HintsError(f"{source}: expected a JSON object")
        if data.get("schema") != SCHEMA:
            raise HintsError(f"{source}: unsupported schema {data.get('schema')!r} (expected {SCHEMA!r}); "
                             f"run `tunerd calibrate` again")
        for key in ("coefficients", "platform", "date"):
            if key not in data:
                raise HintsError(f"{source}: missing field {key!r}")
        coeffs = data["coefficients"]
        if not isinstance(coeffs, Mapping) or not coeffs:
            raise HintsError(f"{source}: 'coefficients' must be a non-empty object")
        try:
            parsed = {t: CoreCoeffs.from_dict(c, core_type=t) for t, c in coeffs.items()}
        except HintsError as err:
            raise HintsError(f"{source}: {err}") from None
        for key, kind in (("platform", Mapping), ("machine", Mapping), ("fit", Mapping), ("samples", list)):
            if key in data and not isinstance(data[key], kind):
                raise HintsError(f"{source}: {key!r} must be {'an object' if kind is Mapping else 'a list'}")
        backend = data.get("backend", DEFAULT_BACKEND)
        if backend not in CALIBRATED_BACKENDS:
            raise HintsError(f"{source}: 'backend' must be one of {', '.join(CALIBRATED_BACKENDS)}, "
                             f"got {backend!r:.40}")
        return cls(parsed, dict(data["platform"]), str(data["date"]), dict(data.get("machine", {})),
                   bool(data.get("quick", False)), dict(data.get("fit", {})), list(data.get("samples", [])),
                   backend=backend)


def save_calibration(cal: Calibration, path: str | os.PathLike) -> Path:
    path = atomic_write_text(path, json.dumps(cal.to_dict(), indent=1) + "\n")
    cal.path = str(path)
    return path


def load_calibration(path: str | os.PathLike) -> Calibration:
    path = Path(path)
    cal = Calibration.from_dict(load_json(path, "calibration file"), source=str(path))
    cal.path = str(path)
    return cal


def calibration_file_name(platform, backend: str = DEFAULT_BACKEND, prefix: str = "") -> str:
    """``<prefix><platform key>.json`` for numpy (the name of old, so earlier calibrations are still
    found) and ``<prefix><platform key>.<backend>.json`` for another backend."""
    if backend not in CALIBRATED_BACKENDS:
        raise HintsError(f"no calibration of backend {backend!r}: one of {', '.join(CALIBRATED_BACKENDS)}")
    tail = "" if backend == DEFAULT_BACKEND else f".{backend}"
    return f"{prefix}{platform_key(platform)}{tail}.json"


def default_calibration_path(platform, backend: str = DEFAULT_BACKEND) -> Path:
    """Where ``tunerd calibrate`` keeps a platform's calibration of ``backend`` when not told (``-o``)."""
    from ..model.loader import cache_dir
    return cache_dir() / "calibration" / calibration_file_name(platform, backend)


def machine_info(backend: str | None = None) -> dict:
    """Where the calibration was measured: host, CPU model, architecture, Python, numpy and BLAS,
    and with ``backend`` what runs it (its version and speed options, tunerd.backends)."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"hostname": _pyplatform.node(), "cpu": cpu or _pyplatform.processor(), "arch": _pyplatform.machine(),
            "python": _pyplatform.python_version()}
    try:
        import numpy as np
        info["numpy"] = np.__version__
        from threadpoolctl import threadpool_info
        blas = [f"{i.get('internal_api')} {i.get('version')}" for i in threadpool_info() if i.get("user_api") == "blas"]
        info["blas"] = ", ".join(blas)
    except ImportError:
        pass
    if backend is not None:
        from ..backends import get_backend
        info["backend"] = get_backend(backend).describe()
    return info
