"""tunerd: pipelined CNN inference for heterogeneous (big.LITTLE) CPUs, tuned online."""
from __future__ import annotations

from .errors import ConfigError, HintsError, ModelError, PlatformError, TunerdError, UnsupportedOpError
from .version import __version__

__all__ = [
    "ConfigError", "HintsError", "ModelError", "PlatformError", "TunerdError", "UnsupportedOpError",
    "Client", "load_model", "__version__",
]


def load_model(source, *, input_size=None, backend=None):
    """Load a model: a path to an .onnx file or ``zoo:NAME`` (see tunerd.model.loader.load_model).

    ``Model.run(x)`` then runs it whole in this process on ``backend``: ``"numpy"`` (the
    dependency-free reference), ``"onnxruntime"``, or None / ``"auto"`` (onnxruntime when it is
    installed, else numpy; the choice and its reason are logged at INFO)."""
    import logging

    from .backends import resolve
    from .model.loader import load_model as _load
    chosen, why = resolve(backend)
    model = _load(source, input_size=input_size)
    chosen.check(model)      # NOTE: numpy refuses here a model with ops only onnxruntime runs
    logging.getLogger(__name__).info("%s: %s", model.name, why)
    return model.use_backend(chosen)


def __getattr__(name):
    # NOTE: lazy, so `import tunerd` stays light (no zmq/numpy) for tools that only need errors
    if name == "Client":
        from .wire.client import Client
        return Client
    raise AttributeError(f"module 'tunerd' has no attribute {name!r}")
