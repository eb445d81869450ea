"""A platform's identity: a short key that stays the same while its clusters do.

Files kept per platform (its calibration in the cache, the daemon's calibration in its state
directory) are named by this key, so a changed platform (other CPUs, another speed) gets a new file
instead of reading costs measured on different cores.
"""
from __future__ import annotations

import hashlib
import json


def platform_key(platform) -> str:
    """A short stable key of a platform's clusters (names, core types, CPUs, speeds)."""
    desc = [[c.name, c.core_type, list(c.cpus), round(float(c.speed), 4)] for c in platform.clusters]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:12]
