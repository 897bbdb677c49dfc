"""The campaign benchmark's arms are valid campaign configurations that differ from the default only as documented."""

from __future__ import annotations

import pytest

from benchmarks.campaigns import (
    DECORATION_ARM_PER_FORMULA,
    bootstrap_ratio,
    campaign_config,
    is_random,
    random_counterpart,
    recall_table,
    table,
)
from loop.config import validate_config


def test_each_arm_is_a_valid_config_that_changes_only_its_own_keys():
    default = validate_config(campaign_config(system="Ti-O", arm="default", seed=1, rounds=4, budget=8))
    assert default.withhold == ["all_compounds"] and default.oracle.kind == "mlff" and default.seed == 1
    assert default.generator.extra_decorations == 0 and default.screening.per_formula is None
    wide = validate_config(campaign_config(system="Ti-O", arm="decorations=200", seed=1, rounds=4, budget=8))
    assert wide.generator.extra_decorations == 200
    assert wide.screening.per_formula == DECORATION_ARM_PER_FORMULA
    assert wide.acquisition == default.acquisition and wide.generator.mix == default.generator.mix
    random = validate_config(campaign_config(system="Ti-O", arm="random", seed=1, rounds=4, budget=8))
    assert random.acquisition.strategy == "random"
    assert random.acquisition.diversity.max_per_formula is None
    assert random.acquisition.diversity.similarity_penalty == 0.0
    # joined arms: random picks among what the decorations arm's generators and screening offer
    both = validate_config(
        campaign_config(system="Ti-O", arm="random+decorations=200", seed=1, rounds=4, budget=8)
    )
    assert both.acquisition == random.acquisition and both.generator == wide.generator
    assert both.screening == wide.screening and both.name == "bench-Ti-O-random_decorations-200-s1"
    for bad in ("decorations=lots", "greedy", "random+greedy"):
        with pytest.raises(SystemExit, match="campaigns:"):
            campaign_config(system="Ti-O", arm=bad, seed=0, rounds=4, budget=8)


def test_the_ratio_interval_is_infinite_not_nan_when_random_found_nothing_in_most_resamples():
    point, low, high = bootstrap_ratio([3.0, 3.0], [2.0, 0.0])
    assert point == 3.0 and low == 1.5 and high == float("inf")
    assert bootstrap_ratio([0.0, 0.0], [0.0, 0.0]) == (1.0, 1.0, 1.0)


def test_each_arm_is_judged_against_the_random_arm_with_its_generators():
    assert random_counterpart("default") == "random"
    assert random_counterpart("decorations=200") == "random+decorations=200"
    # a random arm is one whatever the order of its parts: it is never judged against another random arm
    assert is_random("random") and is_random("random+decorations=200") and is_random("decorations=200+random")
    assert not is_random("default") and not is_random("decorations=200")


def test_the_table_lists_each_arm_and_its_ratio_to_the_random_arm_with_its_generators():
    arm = {"rediscovered_at_budget": (1.0, 0.0, 2.0), "joint_hits": (3.0, 2.0, 4.0), "share_of_targets": 0.5}
    runs = {"decorations=200/s0": {"curve": [0, 1]}, "random+decorations=200/s0": {"curve": [0, 0]}}
    result = {
        "system": "Ti-O",
        "targets": ["a", "b"],
        "runs": runs,
        "summary": {
            "decorations=200": arm,
            "random+decorations=200": {**arm, "rediscovered_at_budget": (0.0, 0.0, 0.0)},
            "decorations=200_over_random": (float("inf"), 1.0, float("inf")),
        },
    }
    lines = table([result]).splitlines()
    assert len(lines) == 5 and "| decorations=200 | 1.00 [0.00, 2.00] | 50% |" in lines[2]
    assert "| decorations=200 / random+decorations=200 | inf [1.00, inf] |" in lines[4]


def test_generation_recall_is_reported_for_every_arm_that_does_not_pick_at_random():
    recall = {
        "1": {"substitution": ["a"], "diffusion": []},
        "2": {"substitution": ["a", "b"], "diffusion": ["b"]},
    }
    runs = {
        "decorations=200/s0": {"generation_recall": recall},
        "random+decorations=200/s0": {"generation_recall": recall},
    }
    lines = recall_table([{"system": "Ti-O", "targets": ["a", "b", "c", "d"], "runs": runs}]).splitlines()
    # no default arm among the runs: the decorations arm still gets its rows, its random counterpart none
    assert lines[2:] == [
        "| Ti-O | 4 | decorations=200 | diffusion | 0% | 25% | – | – |",
        "| Ti-O | 4 | decorations=200 | substitution | 25% | 50% | – | – |",
        "| Ti-O | 4 | decorations=200 | all | 25% | 50% | – | – |",
    ]
