"""The measured cost table: Welford statistics, merging, keys, JSON, refining hints."""
import json
import math
import random

import numpy as np
import pytest

from tunerd.pipeline.measured_costs import CostTable, RunningStat
from tunerd.errors import HintsError


def _stat(values) -> RunningStat:
    s = RunningStat()
    for v in values:
        s.add(v)
    return s


@pytest.mark.parametrize("values", [[5.0], [1.0, 2.0], [1e6 + x for x in (4.0, 7.0, 13.0, 16.0)],
                                    [random.Random(3).gauss(10, 2) for _ in range(500)]])
def test_welford_matches_numpy(values):
    s = _stat(values)
    assert s.n == len(values)
    assert s.mean == pytest.approx(np.mean(values), rel=1e-12)
    want = np.var(values, ddof=1) if len(values) > 1 else 0.0
    assert s.variance == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert s.std == pytest.approx(math.sqrt(want), rel=1e-9, abs=1e-12)


def test_merge_equals_adding_everything():
    rng = random.Random(11)
    values = [rng.expovariate(0.3) for _ in range(300)]
    for cut in (0, 1, 150, 299, 300):
        left, right = _stat(values[:cut]), _stat(values[cut:])
        left.merge(right)
        whole = _stat(values)
        assert left.n == whole.n
        assert left.mean == pytest.approx(whole.mean, rel=1e-12)
        assert left.variance == pytest.approx(whole.variance, rel=1e-9)


def test_keys_keep_frequencies_apart_and_pool_on_request():
    t = CostTable()
    for ms in (2.0, 4.0):
        t.add(3, "A73", 2, 2_362_000, ms)
    t.add(3, "A73", 2, 1_000_000, 12.0)
    t.add(3, "A73", 1, 2_362_000, 7.0)
    t.add(3, "emu@0.5", 1, 0.5, 9.0)
    assert len(t) == 4
    assert t.mean_ms(3, "A73", 2, 2_362_000) == 3.0
    assert t.mean_ms(3, "A73", 2, 1_000_000) == 12.0
    assert t.mean_ms(3, "A73", 2) == 6.0            # pooled over frequencies
    assert t.samples(3, "A73", 2) == 3
    assert t.mean_ms(3, "A73", 1) == 7.0
    assert t.mean_ms(3, "emu@0.5", 1, 0.5) == 9.0
    assert t.mean_ms(4, "A73", 2) is None and t.samples(4, "A73", 2) == 0
    assert t.stat(3, "A73", 2, 2_362_000).variance == 2.0


def test_tables_merge_and_round_trip_json():
    a, b, both = CostTable(), CostTable(), CostTable()
    rng = random.Random(5)
    for i in range(200):
        key = (rng.randrange(4), rng.choice(["A53", "A73"]), rng.randrange(1, 3), rng.choice([None, 1_800_000]))
        ms = rng.uniform(1, 9)
        (a if i % 3 else b).add(*key, ms)
        both.add(*key, ms)
    merged = CostTable().merge(a).merge(b)
    assert len(merged) == len(both)
    for key, stat in both:
        got = merged.stat(*key)
        assert got.n == stat.n
        assert got.mean == pytest.approx(stat.mean, rel=1e-12)
        assert got.m2 == pytest.approx(stat.m2, rel=1e-9)
    text = merged.to_json()
    assert CostTable.from_json(text) == merged
    assert json.loads(text)["format"] == 1


@pytest.mark.parametrize("bad", ['[1]', '{"format": 2, "entries": []}', '{"format": 1}',
                                 '{"format": 1, "entries": [{"unit": 0, "core_type": "x", "cores": 1, '
                                 '"n": 0, "mean_ms": 1, "m2": 0}]}',
                                 '{"format": 1, "entries": [{"unit": 0, "core_type": "x", "cores": 1, '
                                 '"n": 2, "mean_ms": 1, "m2": NaN}]}',
                                 'not json'])
def test_bad_tables_are_refused(bad):
    with pytest.raises(HintsError):
        CostTable.from_json(bad)


@pytest.mark.parametrize("args", [(-1, "A53", 1, None, 1.0), (0, "", 1, None, 1.0), (0, "A53", 0, None, 1.0),
                                  (0, "A53", 1, -5, 1.0), (0, "A53", 1, "fast", 1.0), (0, "A53", 1, None, float("nan")),
                                  (0, "A53", 1, None, -1.0)])
def test_bad_samples_raise_valueerror(args):
    with pytest.raises(ValueError):
        CostTable().add(*args)


def test_refine_replaces_predictions_with_enough_samples():
    from tunerd.costs.table import UnitCostTable
    hints = UnitCostTable({"A73": np.full((3, 2), 10.0)}, np.ones(3))
    t = CostTable()
    for ms in (4.0, 5.0, 6.0):
        t.add(1, "A73", 2, 2_000_000, ms)
    t.add(2, "A73", 1, 2_000_000, 1.0)         # one sample only: not trusted yet
    refined = t.refine(hints)
    assert refined.ms("A73", 2).tolist() == [10.0, 5.0, 10.0]
    assert refined.ms("A73", 1).tolist() == [10.0, 10.0, 10.0]
    assert hints.ms("A73", 2).tolist() == [10.0] * 3          # the hints are not touched
