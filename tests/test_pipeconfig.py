"""Pipeline config text form, validation and CPU assignment."""
from dataclasses import dataclass

import pytest

from tunerd.errors import ConfigError
from tunerd.pipeconfig import (ClusterSpec, PipelineConfig, Stage, as_cluster_specs, assign_cpus, format_config,
                               host_cpus, parse_config, validate)

CLUSTERS = [ClusterSpec("little", "A53", 4), ClusterSpec("big", "A73", 4)]


@pytest.mark.parametrize("text", [
    "0-9@big:4 | 10-17@little:4",
    "0-5@big:2x2 | 6-17@little:4",
    "0-17@big:4",
    "0-0@little:1 | 1-3@big:1x3 | 4-4@big:1 | 5-17@little:3",
])
def test_canonical_text_round_trips_exactly(text):
    config = parse_config(text)
    assert str(config) == text == format_config(config)
    assert parse_config(str(config)) == config
    validate(config, 18, CLUSTERS)


def test_whitespace_and_x1_are_accepted_and_output_is_canonical():
    config = parse_config("  0 - 9 @ big : 2 X 2|10-17@little:4x1  ")
    assert str(config) == "0-9@big:2x2 | 10-17@little:4"
    assert config.stages[0] == Stage(0, 9, "big", 2, 2)
    assert config.cuts == (10,) and config.n_units == 18


def test_configs_are_frozen_hashable_and_comparable():
    a, b = parse_config("0-9@big:4 | 10-17@little:4"), parse_config("0-9@big:4|10-17@little:4")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(AttributeError):
        a.stages = ()  # type: ignore[misc]
    assert PipelineConfig([Stage(0, 3, "big", 4)]) == parse_config("0-3@big:4")


@pytest.mark.parametrize("text, match", [
    ("", "empty pipeline config"),
    ("   ", "empty pipeline config"),
    ("0-9@big:4 | | 10-17@little:4", r"empty stage 2 at column 13"),
    ("0-9@big:4 | 10-17@little", r"bad stage 2 '10-17@little' at column 13: expected FIRST-LAST@CLUSTER:CORES"),
    ("0-9big:4", r"bad stage 1 '0-9big:4' at column 1"),
    ("0-9@big:4 |  10-17@little:four", r"bad stage 2 '10-17@little:four' at column 14"),
    ("0-9@big:-4", r"bad stage 1"),
    ("0-9@big:4x", r"bad stage 1"),
    ("0-9@:4", r"bad stage 1"),
    ("0-9@big:4 ; 10-17@little:4", r"bad stage 1"),
    ("\u0660-\u0661\u0667@big:\u0664", r"bad stage 1"),        # Arabic-Indic digits are not ASCII ones
    ("0-17@big:4\u00a0", r"bad stage 1"),                         # nor a no-break space a space
])
def test_junk_syntax_says_where(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(text)


def test_parse_rejects_non_text():
    with pytest.raises(ConfigError, match="must be text"):
        parse_config(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("text, match", [
    ("2-17@big:4", r"stage 1 \(2-17@big:4\) starts at unit 2: units 0-1 are not covered"),
    ("0-8@big:4 | 11-17@little:4", r"gap: units 9-10 between stage 1 \(0-8@big:4\) and stage 2"),
    ("0-9@big:4 | 8-17@little:4", r"overlap: units 8-9 are in both stage 1"),
    ("0-9@big:4 | 0-17@little:4", r"overlap: units 0-9 are in both stage 1"),
    ("0-9@big:2 | 10-17@little:4 | 4-5@big:2", r"stages out of order: stage 3 \(4-5@big:2\) starts before stage 2"),
    ("0-5@big:1 | 3-4@big:1 | 5-17@little:1", r"overlap: units 3-4 are in both stage 1"),
    ("0-9@big:4 | 10-19@little:4", r"stage 2 \(10-19@little:4\) ends at unit 19 but the model has 18 units"),
    ("0-9@big:4 | 10-15@little:4", r"units 16-17 are not covered \(the model has 18 units\)"),
    ("0-9@mid:4 | 10-17@little:4", r"stage 1 \(0-9@mid:4\): unknown cluster 'mid' \(clusters: little, big\)"),
    ("0-9@big:0 | 10-17@little:4", r"stage 1 \(0-9@big:0\): cores must be >= 1, got 0"),
    ("0-9@big:4x0 | 10-17@little:4", r"stage 1 \(0-9@big:4x0\): replicas must be >= 1, got 0"),
    ("0-9@big:3x2 | 10-17@little:4", r"stage 1 \(0-9@big:3x2\) needs 6 cores but cluster 'big' has 4"),
    ("0-9@big:5 | 10-17@little:4", r"needs 5 cores but cluster 'big' has 4"),
    ("0-4@big:2 | 5-9@little:2 | 10-17@big:1x3",
     r"overlapping cores: stages 1, 3 use 5 cores of cluster 'big' which has 4"),
    ("9-5@big:4", r"stage 1 \(9-5@big:4\): first unit 9 is after last unit 5"),
])
def test_validate_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        validate(parse_config(text), 18, CLUSTERS)


def test_validate_programmatic_oddities():
    with pytest.raises(ConfigError, match="no stages"):
        validate(PipelineConfig(()), 4, CLUSTERS)
    with pytest.raises(ConfigError, match="unit -1 is negative"):
        validate(PipelineConfig((Stage(-1, 3, "big", 1),)), 4, CLUSTERS)


@dataclass
class PlatformCluster:  # the shape of tunerd.platform.clusters's richer Cluster
    name: str
    core_type: str
    cpus: tuple


def test_clusters_with_cpus_are_accepted():
    rich = [PlatformCluster("little", "A53", (0, 1, 2, 3)), PlatformCluster("big", "A73", (4, 5, 6, 7))]
    assert as_cluster_specs(rich) == CLUSTERS
    validate(parse_config("0-3@big:4 | 4-7@little:1x4"), 8, rich)
    with pytest.raises(ConfigError, match="duplicate cluster names"):
        as_cluster_specs([CLUSTERS[0], CLUSTERS[0]])
    with pytest.raises(ConfigError, match="needs .name and .core_type"):
        as_cluster_specs([object()])
    with pytest.raises(ConfigError, match="neither .cores nor .cpus"):
        as_cluster_specs([PlatformCluster("x", "X", None)])


def test_assign_cpus_in_order_and_disjoint():
    rich = [PlatformCluster("little", "A53", (0, 1, 2, 3)), PlatformCluster("big", "A73", (4, 5, 6, 7))]
    config = parse_config("0-2@big:1x2 | 3-4@little:3 | 5-7@big:2 | 8-9@little:1")
    cpus = assign_cpus(config, rich)
    assert cpus == [[(4,), (5,)], [(0, 1, 2)], [(6, 7)], [(3,)]]
    flat = [c for stage in cpus for rep in stage for c in rep]
    assert len(flat) == len(set(flat))
    # clusters with only a core count get consecutive ids, cluster after cluster
    assert assign_cpus(parse_config("0-1@big:2x2 | 2-3@little:4"), CLUSTERS) == [[(4, 5), (6, 7)], [(0, 1, 2, 3)]]
    with pytest.raises(ConfigError, match="overlapping cores"):
        assign_cpus(parse_config("0-1@big:2x2 | 2-3@big:1"), rich)


def test_host_cpus_prefer_free_cpus_then_the_stage_with_most_slack():
    rich = [PlatformCluster("little", "A53", (0, 1, 2, 3)), PlatformCluster("big", "A73", (4, 5, 6, 7))]
    # CPUs no stage uses: the feeder goes there, whatever the stages measure
    config = parse_config("0-4@big:2 | 5-9@little:3")
    assert host_cpus(config, rich) == (3, 6, 7)
    assert host_cpus(config, rich, periods=[5.0, 9.0]) == (3, 6, 7)
    # every CPU busy: the stage with the shortest period (replicas accounted by the caller)
    full = parse_config("0-4@big:2x2 | 5-9@little:4")
    assert host_cpus(full, rich, periods=[4.0, 9.0]) == (4, 5, 6, 7)
    assert host_cpus(full, rich, periods=[9.0, 4.0]) == (0, 1, 2, 3)
    # no free CPU and nothing measured (or not every stage): no advice
    assert host_cpus(full, rich) == ()
    assert host_cpus(full, rich, periods=[4.0, None]) == ()
    assert host_cpus(full, rich, periods=[4.0]) == ()
