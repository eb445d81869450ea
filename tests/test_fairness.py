"""Fair admission on a live daemon: while one client floods (64 frames in flight, resending at
once on every reply), a client sending one frame at a time is never refused `busy` and waits behind
a bounded number of the flooder's frames (the round-robin turn and the frames inside the pipeline),
not behind the flooder's backlog; the flooder is held to its cap (max_client_frames). Counts only."""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from bench_fairness import Flooder, polite  # noqa: E402
from harness import MODEL, SIZE, DaemonProcess, wait_for  # noqa: E402

pytestmark = pytest.mark.skipif(not {0, 1} <= os.sched_getaffinity(0), reason="needs CPUs 0 and 1")


def test_a_polite_client_is_served_in_its_turn_while_another_floods(tmp_path):
    config = "0-8@big:1 | 9-17@little:1"
    with DaemonProcess(tmp_path, extra=("--pin", config)) as d:
        shape = tuple(d.status()["input_shape"])
        flooder = Flooder(d.frames, shape, depth=64)
        flooder.start()
        try:
            wait_for(lambda: flooder.busy > 0 and flooder.served > 20, 60, "the flood to fill the daemon")
            result = polite(d.frames, shape, 20, flooder)
        finally:
            flooder.stop.set()
            flooder.join(10)
        assert result["busy"] == 0 and result["answered"] == 20     # never refused for the other's flood
        # FIFO admission would put it behind the flooder's whole backlog (its cap: 32 frames);
        # in turns it waits for the frames inside the pipeline (3 with two workers) and the one
        # ahead of it in the round, plus replies already on their way
        assert result["flooder_replies_while_waiting_median"] <= 8, result
        assert flooder.busy > 0                        # the flooder, beyond its cap, is the one refused
        status = d.status()
        assert status["frames_failed"] == 0 and status["clients"] <= 1
