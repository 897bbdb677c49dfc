"""The soak benchmark reads a campaign's finished rounds through the store's API."""

from __future__ import annotations

from benchmarks.soak import finished_rounds, summarize
from loop.store import CampaignStore


def test_finished_rounds_are_the_done_ones_and_none_before_the_store_exists(tmp_path):
    assert finished_rounds(None) == []
    store = CampaignStore.in_workdir(tmp_path)
    try:
        for rnd in (0, 1, 2):
            store.start_round(rnd)
        store.finish_round(0, {})
        store.finish_round(1, {})
        assert finished_rounds(store) == [0, 1]  # round 2 is still running
    finally:
        store.close()


def test_growth_is_judged_after_round_3():
    rows = [{"round": r, "rss_mib": 100.0 + r, "fds": 20, "store_mib": 0.1 * r} for r in range(1, 7)]
    out = summarize(rows)
    assert out["rss_round3_mib"] == 103.0 and out["rss_max_after_mib"] == 106.0
    assert out["fd_growth"] == 0 and out["meets_targets"]
    assert not summarize(rows[:3])["meets_targets"]  # nothing after round 3 to judge
