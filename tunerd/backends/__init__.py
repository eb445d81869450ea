"""The backends wing: what runs a range of units (a pipeline stage) on this CPU.

Owns the stage-runner interface and the choice of backend (base), the dependency-free numpy kernels
(numpy_backend) and onnxruntime on the model's own ONNX export (onnxruntime_backend). The rest of the
code compiles a unit range into a StageRunner and never asks which backend runs it. It may import the
ground floor and tunerd.model; never the pipeline, the search or the daemon.
"""
from .base import BACKEND_NAMES, Backend, StageRunner, get_backend, resolve, run_model

__all__ = ["BACKEND_NAMES", "Backend", "StageRunner", "get_backend", "resolve", "run_model"]
