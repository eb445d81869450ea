#!/usr/bin/env python3
"""Can onnxruntime sessions share the mapped weights file? (figures, not a test; docs/BENCHMARKS.md)

Builds one session over units FIRST..LAST of a zoo model at 224 in a fresh process and prints the
resident memory it added, with its weights given three ways:

  embedded   the cut's initializers in the model bytes (what tunerd.backends.onnxruntime_backend does)
  external   the initializers marked external and handed over with
             SessionOptions.add_external_initializers as OrtValues over the memory-mapped weights
  add-init   SessionOptions.add_initializer with the initializers' data removed from the model
             (onnxruntime refuses this: an initializer must keep its data)

    .venv/bin/python tools/bench_ort_weight_sharing.py [--model zoo:resnet50] [--first 0] [--last 17]

Each mode runs in its own child process so that one's memory does not count in another's.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

_CHILD = r"""
import gc, sys
import numpy as np, psutil
import onnxruntime as ort
from onnx import TensorProto
import tunerd
from tunerd.backends.onnxruntime_backend import OnnxruntimeBackend
from tunerd.backends.subgraph import export_of, release_freed_memory, release_mapped_pages

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) / 1024
    return out
mode, source, first, last = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
m = tunerd.load_model(source, input_size=224, backend="numpy")
ex = export_of(m)
opts = OnnxruntimeBackend().options(1, False)
me = psutil.Process()
gc.collect(); release_freed_memory()
r0 = status()
proto = ex.cut(first, last)
keep, names = [], []
for t in proto.graph.initializer:
    if mode == "embedded" or t.name not in ex.weights:
        continue
    keep.append(ort.OrtValue.ortvalue_from_numpy(np.asarray(ex.weights[t.name]))); names.append(t.name)
    nbytes = ex.weights[t.name].nbytes
    t.ClearField("raw_data"); t.ClearField("float_data")
    if mode == "external":
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "weights.bin"), ("offset", "0"), ("length", str(nbytes))):
            e = t.external_data.add(); e.key = k; e.value = v
    else:
        opts.add_initializer(t.name, keep[-1])
if mode == "external":
    opts.add_external_initializers(names, keep)
data = proto.SerializeToString()
t = None; del proto     # NOTE: a TensorProto still referenced keeps the whole message's memory alive
try:
    s = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
except Exception as err:
    print(f"{mode:9s} refused: {str(err).splitlines()[0][:160]}"); sys.exit(0)
s._model_bytes = None; del data; gc.collect(); release_freed_memory()
if mode == "embedded":
    release_mapped_pages(ex.weights.values())      # as the backend does: the session has its copy
x = np.zeros(ex.shapes[ex.ends[first][0]], np.float32)
s.run(None, {ex.ends[first][0]: x})
r1 = status()
print(f"{mode:9s} session +{r1['RssAnon'] - r0['RssAnon']:.1f} MiB private (anonymous), "
      f"+{r1['RssFile'] - r0['RssFile']:.1f} MiB of mapped files (the weights file: shareable)")
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="zoo:resnet50")
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--last", type=int, default=None, help="default: the last unit")
    args = ap.parse_args(argv)
    if args.last is None:
        import tunerd
        args.last = len(tunerd.load_model(args.model, input_size=224, backend="numpy").units) - 1
    print(f"{args.model} at 224, units {args.first}-{args.last}, 1 thread, optimisation all")
    for mode in ("embedded", "external", "add-init"):
        subprocess.run([sys.executable, "-c", _CHILD, mode, args.model, str(args.first), str(args.last)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
