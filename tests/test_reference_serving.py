"""Three architectures of the real-export set served end to end: `tunerd serve` on the model file a
user brings (the dynamo exporter's graph, symbolic batch, height and width, --input-size given), on
the onnxruntime backend, an emulated big.LITTLE: replies equal onnxruntime on the original file, the
tuner converges and says what it gained."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import reference_graphs as R

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from harness import DaemonProcess, wait_for  # noqa: E402

from tunerd.wire.client import Client  # noqa: E402

pytestmark = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2 or not {0, 1} <= os.sched_getaffinity(0),
                                reason="needs CPUs 0 and 1")
SIZE = 32
# an SE block with hard-swish, a compound-scaled net with SiLU, a channel shuffle (Split, Transpose)
SERVED = ["mobilenet_v3_small.dynamo", "efficientnet_b0.dynamo", "shufflenet_v2.dynamo"]


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    # NOTE: shared, so the daemons after the first reuse its calibration
    return tmp_path_factory.mktemp("serving-state")


@pytest.mark.parametrize("name", SERVED)
def test_a_new_architecture_is_served_and_tuned(name, tmp_path, state_dir):
    path = R.materialise(name, tmp_path)
    sess = R.ort_session(path)
    xs = [np.random.default_rng(k).standard_normal((1, 3, SIZE, SIZE)).astype(np.float32) for k in range(3)]
    want = [sess.run(None, {sess.get_inputs()[0].name: x})[0] for x in xs]
    with DaemonProcess(tmp_path, name="srv", model=str(path), size=SIZE, state_dir=state_dir,
                       backend="onnxruntime", extra=("--budget", "6")) as d:
        status = d.status()
        assert status["backend"] == "onnxruntime"
        with Client(d.frames, timeout=60) as c:
            def served():
                for x, ref in zip(xs, want):
                    y = c.infer(x)
                    assert y.shape == ref.shape
                    assert float(np.abs(y - ref).max() / np.abs(ref).max()) <= 1e-5
                return d.status()["state"] == "converged"
            status = wait_for(lambda: served() and d.status(), 240, f"{name} converged")
        assert status["frames_failed"] == 0
        assert status["best"]["fps"] > 0 and status["evaluations"] > 0
