"""Stage backends: choosing one, and onnxruntime stages cut at unit boundaries that chain to the
whole model's result, write the caller's buffers in place, time each unit and cache their sessions."""
from __future__ import annotations

import functools
import sys

import numpy as np
import pytest

from tunerd.backends import BACKEND_NAMES, get_backend, resolve, run_model
from tunerd.backends.base import ORT_HINT
from tunerd.errors import ConfigError, ModelError
from tunerd.model.loader import load_model

ort = pytest.importorskip("onnxruntime")
from tunerd.backends import onnxruntime_backend as ob  # noqa: E402
from tunerd.backends.onnxruntime_backend import OnnxruntimeBackend  # noqa: E402
from tunerd.backends.subgraph import export_of, initializer_bytes  # noqa: E402

ZOO = ("squeezenet", "resnet50", "mobilenet", "alexnet", "googlenet")


@functools.lru_cache(maxsize=None)
def model(name: str, size: int = 64):
    # NOTE: not stored (store=False): the test cache directory is per test, these are shared by all
    return load_model(f"zoo:{name}", input_size=size, store=False)


@functools.lru_cache(maxsize=None)
def frame(name: str, size: int = 64) -> np.ndarray:
    return np.random.default_rng(7).standard_normal(model(name, size).input_shape).astype(np.float32)


@functools.lru_cache(maxsize=None)
def whole_ort(name: str) -> np.ndarray:
    """The whole model's onnxruntime result: one session on export_onnx of the whole graph."""
    from tunerd.model.onnx_io import export_onnx
    m = model(name)
    sess = ort.InferenceSession(export_onnx(m.graph).SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {m.graph.input_name: frame(name)})[0]


def rel(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())


def chained(backend, m, x, bounds) -> np.ndarray:
    """Run stage by stage: bounds [(first, last), ...] cover the units in order."""
    for first, last in bounds:
        r = backend.compile(m, first, last)
        out = np.empty(r.output_shape, np.float32)
        assert r.run(x, out) is out
        x = out
    return x


def splits(n: int) -> list[list[tuple[int, int]]]:
    """Two-stage cuts at a quarter, half and three quarters, and one three-stage cut."""
    cuts = sorted({max(1, n // 4), n // 2, max(1, 3 * n // 4)})
    out = [[(0, c - 1), (c, n - 1)] for c in cuts if 0 < c < n]
    a, b = n // 3, 2 * n // 3
    if 0 < a < b < n:
        out.append([(0, a - 1), (a, b - 1), (b, n - 1)])
    return out


# ---------------------------------------------------------------- choosing a backend

def test_auto_picks_onnxruntime_when_installed():
    backend, why = resolve("auto")
    assert backend.name == "onnxruntime" and "onnxruntime is installed" in why
    assert resolve(None)[0] is backend is get_backend() is get_backend(backend)
    assert BACKEND_NAMES == ("auto", "numpy", "onnxruntime")
    assert ort.__version__ in backend.describe() and backend.version() == ort.__version__


def test_numpy_by_name_and_unknown_names():
    backend, why = resolve(" NumPy ")
    assert backend.name == "numpy" and "by name" in why and backend is get_backend("numpy")
    with pytest.raises(ConfigError) as err:
        resolve("tensorrt")
    assert "'tensorrt'" in str(err.value) and "auto, numpy, onnxruntime" in str(err.value)


def test_onnxruntime_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)     # makes ``import onnxruntime`` fail
    with pytest.raises(ConfigError) as err:
        resolve("onnxruntime")
    assert str(err.value) == ORT_HINT == "the onnxruntime backend needs onnxruntime: pip install tunerd[onnx]"
    backend, why = resolve("auto")
    assert backend.name == "numpy" and "not installed" in why and "\n" not in why


# ---------------------------------------------------------------- stages chain to the whole model

@pytest.mark.parametrize("name", ZOO)
def test_stages_chain_to_the_whole_model(name):
    m = model(name)
    backend = OnnxruntimeBackend()
    ref_ort, ref_np = whole_ort(name), m.run(frame(name))
    n = len(m.units)
    whole = chained(backend, m, frame(name), [(0, n - 1)])
    assert rel(whole, ref_ort) <= 1e-5
    for bounds in splits(n):
        y = chained(backend, m, frame(name), bounds)
        assert rel(y, ref_ort) <= 1e-5, bounds
        assert rel(y, ref_np) <= 1e-4, bounds


@pytest.mark.parametrize("name", ["squeezenet", "mobilenet"])
def test_every_two_stage_cut(name):
    m = model(name)
    backend = OnnxruntimeBackend(sessions_kept=2)
    n = len(m.units)
    for c in range(1, n):
        assert rel(chained(backend, m, frame(name), [(0, c - 1), (c, n - 1)]), whole_ort(name)) <= 1e-5, c


def test_stored_model_with_mapped_weights():
    m = load_model("zoo:squeezenet", input_size=32)     # weights memory-mapped from the model cache
    x = np.random.default_rng(1).standard_normal(m.input_shape).astype(np.float32)
    y = run_model(m, x, "onnxruntime")
    assert y.shape == m.output_shape and rel(y, m.run(x)) <= 1e-4


# ---------------------------------------------------------------- timing, buffers, caches

def test_run_timed_one_positive_time_per_unit_and_same_output():
    m = model("googlenet")
    backend = OnnxruntimeBackend()
    r = backend.compile(m, 2, 7, threads=2)
    x = chained(backend, m, frame("googlenet"), [(0, 1)])
    y = np.empty(r.output_shape, np.float32)
    r.run(x, y)
    built = backend.sessions_built
    yt = np.empty_like(y)
    times = r.run_timed(x, yt)
    assert len(times) == r.n_units == 6 and all(t > 0 for t in times)
    assert rel(yt, y) <= 1e-5
    assert backend.sessions_built == built + 6       # the chain, built on the first timed call
    yt2 = np.empty_like(y)
    assert len(r.run_timed(x, yt2)) == 6 and backend.sessions_built == built + 6
    np.testing.assert_array_equal(yt2, yt)
    # a second runner of the same range reuses the chain's unit sessions
    r2 = backend.compile(m, 2, 7, threads=2)
    r2.run_timed(x, yt2)
    assert backend.sessions_built == built + 6


def test_single_unit_range_is_its_own_chain():
    m = model("alexnet")
    backend = OnnxruntimeBackend()
    r = backend.compile(m, 0, 0)
    out = np.empty(r.output_shape, np.float32)
    built = backend.sessions_built
    assert len(r.run_timed(frame("alexnet"), out)) == 1 and backend.sessions_built == built


def test_output_written_in_place_and_input_read_in_place():
    m = model("squeezenet")
    r = OnnxruntimeBackend().compile(m, 0, 4)
    x = frame("squeezenet").copy()
    out = np.full(r.output_shape, np.nan, np.float32)
    addr = out.__array_interface__["data"][0]
    assert r.run(x, out) is out and np.isfinite(out).all()
    (binding,) = r._bindings.values()
    assert binding.get_outputs()[0].data_ptr() == addr     # onnxruntime's output is our buffer
    first = out.copy()
    # the binding kept from the first call reads x's memory as it is now, not a copy made then
    x *= 0.5
    r.run(x, out)
    assert len(r._bindings) == 1 and out.__array_interface__["data"][0] == addr
    fresh = np.empty_like(out)
    OnnxruntimeBackend().compile(m, 0, 4).run(x.copy(), fresh)
    np.testing.assert_array_equal(out, fresh)
    assert not np.array_equal(out, first)


def test_ring_slot_views_and_bounded_bindings():
    m = model("mobilenet")
    r = OnnxruntimeBackend().compile(m, 3, 5)
    ring_in = np.zeros((4, *r.input_shape), np.float32)
    ring_out = np.zeros((ob.BINDINGS_KEPT + 3, *r.output_shape), np.float32)
    ring_in[:] = chained(get_backend("onnxruntime"), m, frame("mobilenet"), [(0, 2)])
    ref = np.empty(r.output_shape, np.float32)
    r.run(ring_in[0].copy(), ref)
    for k in range(len(ring_out)):
        r.run(ring_in[k % 4], ring_out[k])
        assert len(r._bindings) <= ob.BINDINGS_KEPT
    assert all(np.array_equal(o, ref) for o in ring_out)
    # a strided input is copied once into the runner's own buffer, never a new allocation per call
    wide = np.zeros((*r.input_shape[:-1], r.input_shape[-1] * 2), np.float32)
    wide[..., ::2] = ring_in[0]
    r.run(wide[..., ::2], ring_out[0])
    np.testing.assert_array_equal(ring_out[0], ref)


def test_session_cache_hit_and_bound():
    m = model("resnet50")
    backend = OnnxruntimeBackend(sessions_kept=3)
    a = backend.compile(m, 2, 9)
    built, hits = backend.sessions_built, backend.cache_hits
    b = backend.compile(m, 2, 9)
    assert backend.sessions_built == built and backend.cache_hits == hits + 1 and b.session is a.session
    assert b is not a and b._bindings is not a._bindings
    c = backend.compile(m, 2, 9, threads=2)
    assert backend.sessions_built == built + 1 and c.session is not a.session
    for first in range(4):
        backend.compile(m, first, first)
    assert len(backend._sessions) == 3
    a.close()
    with pytest.raises(ModelError, match="closed"):
        a.run(np.zeros(a.input_shape, np.float32), np.zeros(a.output_shape, np.float32))


def test_cached_sessions_hold_at_most_one_models_weights():
    """However many ranges a search compiles, the cached sessions copy at most one model's weights
    (the newest always stays), and a runner says what it holds, its chain included."""
    m = model("alexnet")
    backend = OnnxruntimeBackend()
    budget = backend.memory_budget(m)
    assert budget == sum(w.nbytes for w in m.graph.weights.values())
    n = len(m.units)
    for first, last in [(0, n - 1), (0, n // 2 - 1), (n // 2, n - 1), (1, n - 1), (0, n - 2), (2, n - 1)]:
        r = backend.compile(m, first, last)
        assert sum(s.nbytes for s in backend._sessions.values()) <= max(budget, r.private_bytes)
        assert next(reversed(backend._sessions.values())) is r._main
    whole = backend.compile(m, 0, n - 1)
    assert whole.private_bytes == whole._main.nbytes > 0.9 * budget
    out = np.empty(whole.output_shape, np.float32)
    whole.run_timed(np.zeros(whole.input_shape, np.float32), out)
    assert whole.private_bytes > 1.8 * budget                 # the chain's second copy counts
    assert get_backend("numpy").memory_budget(m) is None and get_backend("numpy").compile(m).private_bytes == 0


def test_run_model_compiles_once():
    m = model("squeezenet")
    backend = OnnxruntimeBackend()
    x = frame("squeezenet")
    y = run_model(m, x, backend)
    built = backend.sessions_built
    y2 = run_model(m, x, backend)
    assert backend.sessions_built == built and y2 is not y
    np.testing.assert_array_equal(y, y2)
    assert rel(y, m.run(x)) <= 1e-4
    np.testing.assert_array_equal(run_model(m, x, "numpy"), m.run(x))
    with pytest.raises(ModelError, match="dtype"):
        run_model(m, x.astype(np.float64), backend)


def test_numpy_backend_is_the_plan():
    m = model("googlenet")
    backend = get_backend("numpy")
    r = backend.compile(m, 1, 4, threads=3)
    x = chained(backend, m, frame("googlenet"), [(0, 0)])
    out = np.empty(r.output_shape, np.float32)
    assert r.run(x, out) is out
    np.testing.assert_array_equal(out, m.plan(1, 4).run(x))
    out2 = np.empty_like(out)
    times = r.run_timed(x, out2)
    assert len(times) == r.n_units == 4 and all(t >= 0 for t in times)
    np.testing.assert_array_equal(out2, out)


# ---------------------------------------------------------------- each stage loads only its weights

@pytest.mark.parametrize("name", ZOO)
def test_stage_carries_only_its_units_weights(name):
    m = model(name)
    exp = export_of(m)
    weights = m.graph.weights
    n = len(m.units)
    total = 0
    for first, last in [(0, n // 2 - 1), (n // 2, n - 1), (0, n - 1)] + [(u, u) for u in range(n)]:
        proto = exp.cut(first, last)
        used = {i for node in m.graph.nodes[m.units[first].first:m.units[last].last + 1]
                for i in node.inputs if i in weights}
        names = {t.name for t in proto.graph.initializer}
        assert names & set(weights) == used, (first, last)
        assert initializer_bytes(proto, set(weights)) == sum(weights[k].nbytes for k in used)
        if first == last:
            total += initializer_bytes(proto, set(weights))
    assert total == sum(w.nbytes for w in weights.values())     # the units' cuts partition the weights


def test_the_export_stages_are_cut_from_reads_no_weight():
    """The skeleton is exported without the weights (declared as inputs of their shape instead), and
    a session, once built, gives back the pages of the mapped weights file that its cut read."""
    import psutil
    from tunerd.backends.subgraph import release_mapped_pages
    from tunerd.model.onnx_io import export_onnx
    m = load_model("zoo:alexnet", input_size=64)        # stored: weights mapped from the cache
    weights = m.graph.weights
    proto = export_onnx(m.graph, with_weights=False)
    assert not {t.name for t in proto.graph.initializer} & set(weights)
    declared = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in proto.graph.input}
    assert all(declared[k] == list(v.shape) for k, v in weights.items())
    big = max(weights.values(), key=lambda a: a.nbytes)
    assert isinstance(big.base, np.ndarray) and big.nbytes > 8 * 2**20
    me = psutil.Process()
    before = me.memory_info().rss
    float(np.asarray(big, np.float64).sum())             # page it in
    paged = me.memory_info().rss
    release_mapped_pages([big])
    after = me.memory_info().rss
    assert paged - before > 0.5 * big.nbytes and paged - after > 0.5 * big.nbytes, (before, paged, after)
    release_mapped_pages([np.zeros(3)])                  # not a mapping: left alone


# ---------------------------------------------------------------- errors name units and backend

def test_errors_name_units_and_backend(monkeypatch):
    m = model("squeezenet")
    backend = OnnxruntimeBackend()
    with pytest.raises(ModelError, match=r"^onnxruntime backend, units 3-99: unit range is outside 0-17$"):
        backend.compile(m, 3, 99)
    with pytest.raises(ModelError, match=r"^numpy backend, units 5-2: "):
        get_backend("numpy").compile(m, 5, 2)
    with pytest.raises(ConfigError, match=r"^onnxruntime backend, units 0-1: threads"):
        backend.compile(m, 0, 1, threads=0)

    r = backend.compile(m, 1, 2)
    good_x, good_out = np.zeros(r.input_shape, np.float32), np.zeros(r.output_shape, np.float32)
    with pytest.raises(ModelError, match=r"^onnxruntime backend, units 1-2: input must be float32"):
        r.run(np.zeros((1, 3, 8, 8), np.float32), good_out)
    with pytest.raises(ModelError, match=r"^onnxruntime backend, units 1-2: out must be"):
        r.run(good_x, np.zeros(r.output_shape, np.float64))

    def fail(*args, **kwargs):
        raise RuntimeError("kernel exploded")
    monkeypatch.setattr(r.session, "run_with_iobinding", fail)
    with pytest.raises(ModelError, match=r"^onnxruntime backend, units 1-2: run failed: RuntimeError: kernel exploded"):
        r.run(good_x, good_out)

    from onnx import helper

    def broken_cut(self, first, last):
        proto = real_cut(self, first, last)
        proto.graph.node.append(helper.make_node("NoSuchOp", [proto.graph.output[0].name], ["z"]))
        return proto
    real_cut = type(export_of(m)).cut
    monkeypatch.setattr(type(export_of(m)), "cut", broken_cut)
    with pytest.raises(ModelError, match=r"^onnxruntime backend, units 4-6: cannot create the session: "):
        backend.compile(m, 4, 6)
    with pytest.raises(ConfigError, match="optimisation level"):
        OnnxruntimeBackend(opt_level="max")
