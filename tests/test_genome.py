"""Genome operators: every one keeps individuals valid, mutates in place, invalidates fitness."""
import importlib
import random
import warnings

import pytest

from tunerd.tuning import genome as genome_module
from tunerd.tuning.genome import Genome, GenomeSpace, config_to_genome, genome_to_config
from tunerd.pipeconfig import ClusterSpec, parse_config, validate

BOARDS = {
    "hikey": [ClusterSpec("little", "A53", 4), ClusterSpec("big", "A73", 4)],
    "tx2": [ClusterSpec("denver", "D2", 2), ClusterSpec("a57", "A57", 4)],
    "three": [ClusterSpec("l", "A55", 4), ClusterSpec("m", "A76", 3), ClusterSpec("p", "X1", 1)],
    "one": [ClusterSpec("cpu", "X", 2)],
}
CASES = [(board, n) for board in BOARDS for n in (1, 2, 5, 18)]


def _space(board, n):
    return GenomeSpace(BOARDS[board], n)


def _valid(space, ind):
    config = space.to_config(ind)
    validate(config, space.n_units, space.clusters)
    assert len(config) <= space.max_stages
    return config


def _evaluated(space, rng):
    ind = space.random_genome(rng)
    ind.fitness.values = (1.0,)
    return ind


@pytest.mark.parametrize("board, n", CASES)
def test_every_mutation_keeps_genomes_valid(board, n):
    space = _space(board, n)
    rng = random.Random(f"{board}{n}")
    for op, _weight in space.mutations:
        for _ in range(60):
            ind = _evaluated(space, rng)
            same = ind
            out = op(ind, rng)
            assert out[0] is same, f"{op.__name__} must work in place"
            assert not ind.fitness.valid, f"{op.__name__} must invalidate the fitness"
            _valid(space, ind)


@pytest.mark.parametrize("board, n", CASES)
def test_crossover_children_are_valid(board, n):
    space = _space(board, n)
    rng = random.Random(f"cx{board}{n}")
    for _ in range(80):
        a, b = _evaluated(space, rng), _evaluated(space, rng)
        ca, cb = space.crossover(a, b, rng)
        assert ca is a and cb is b
        assert not a.fitness.valid and not b.fitness.valid
        _valid(space, a)
        _valid(space, b)


def test_mutations_reach_structural_variety():
    space = _space("hikey", 18)
    rng = random.Random(3)
    ind = space.from_config(parse_config("0-9@big:4 | 10-17@little:4"))
    seen = set()
    for _ in range(400):
        space.mutate(ind, rng)
        config = _valid(space, ind)
        seen.add(str(config))
    shapes = {(s.cores, s.replicas) for c in seen for s in parse_config(c).stages}
    assert len(seen) > 100
    assert {(4, 1), (1, 4), (2, 2)} <= shapes
    assert max(len(parse_config(c)) for c in seen) >= 4


def test_repair_fixes_garbage():
    space = _space("hikey", 6)
    cases = [
        [],
        [[3, 7, 9, 9], [3, 1, 0, -2], [100, 1, 4, 4]],
        [[6, 0, 1, 1]] * 5,
        [[1, 1, 1, 1], [2, 1, 1, 1], [3, 1, 1, 1], [4, 1, 1, 1], [5, 1, 1, 1], [6, 1, 1, 1]],
        [[i, 0, 1, 1] for i in range(1, 7)] + [[7, 1, 4, 1]],
    ]
    for genes in cases:
        ind = Genome([list(g) for g in genes])
        space.repair(ind)
        _valid(space, ind)


def test_config_genome_round_trip():
    clusters = BOARDS["hikey"]
    for text in ("0-9@big:4 | 10-17@little:4", "0-5@big:2x2 | 6-17@little:1x4", "0-17@big:4"):
        config = parse_config(text)
        assert genome_to_config(config_to_genome(config, clusters), clusters) == config
    space = _space("hikey", 18)
    rng = random.Random(9)
    for _ in range(50):
        ind = space.random_genome(rng)
        assert space.from_config(space.to_config(ind)) == ind


def test_seeded_operators_are_deterministic():
    def run(seed):
        space = _space("tx2", 12)
        rng = random.Random(seed)
        ind = space.random_genome(rng)
        out = []
        for _ in range(50):
            space.mutate(ind, rng)
            out.append(space.key(ind))
        return out

    assert run(5) == run(5)
    assert run(5) != run(6)


def test_creator_classes_are_created_once():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(genome_module)
    assert genome_module.Genome is Genome
