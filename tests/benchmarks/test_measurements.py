"""The arithmetic the performance benchmarks report: epoch lag, the server profile, train_speed's ratios, the augmentation verdict."""
from __future__ import annotations

import pytest

from benchmarks.augmentation import verdict
from benchmarks.dashboard import epoch_lags
from benchmarks.dashboard_profile import summarise_profile
from benchmarks.train_speed import summarise


def test_epoch_lag_counts_from_the_first_ended_epoch_the_page_does_not_show():
    ended = [10.0, 20.0, 30.0]  # epochs 1, 2, 3 ended at these times
    samples = [(5.0, None), (11.0, None), (12.0, 1), (21.5, 1), (22.0, 2), (31.0, 1), (40.0, 3)]
    assert epoch_lags(samples, ended) == pytest.approx([0.0, 1.0, 0.0, 1.5, 0.0, 11.0, 0.0])


def test_server_profile_leaves_waits_out_and_ranks_our_functions(tmp_path):
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "run (streamlit/x.py:1);body (dashboard/views/train.py:60);rows (core/runs.py:135) 30\n"
        "run (streamlit/x.py:1);body (dashboard/views/train.py:60);plot (plotly/y.py:5) 10\n"
        "loop (asyncio/base_events.py:1);Condition.wait (threading.py:327) 60\n")
    profile = summarise_profile(raw)
    assert profile["samples"] == 40 and profile["idle_samples"] == 60
    assert profile["ours_inclusive"][0] == ["body (dashboard/views/train.py:60)", 1.0]
    assert ["rows (core/runs.py:135)", 0.75] in profile["ours_inclusive"]
    assert profile["leaf_self"][0] == ["rows (core/runs.py:135)", 0.75]
    assert summarise_profile(tmp_path / "missing.txt") == {"samples": 0}


def test_train_speed_ratios_are_taken_per_round_then_summarised_by_median_and_range():
    def run(head, finetune, precision):
        return {"seconds": {"prepare": 1.0, "head": head, "finetune": finetune, "train_total": 1.0 + head + finetune},
                "test_auc": 0.9, "precision": precision}

    rounds = [{"none": {"tutorial-float32": run(40, 60, "float32"), "tutorial-same": run(20, 40, "bf16"),
                        "ours-float32": run(10, 30, "float32"), "ours-same": run(5, 20, "bf16")}},
              {"none": {"tutorial-float32": run(44, 66, "float32"), "tutorial-same": run(22, 33, "bf16"),
                        "ours-float32": run(11, 33, "float32"), "ours-same": run(4, 22, "bf16")}}]
    summary = summarise(rounds, ["none"], ["tutorial-float32", "tutorial-same", "ours-float32", "ours-same"],
                         n_tr=100, epochs=(3, 3))["none"]
    same = summary["ratios"]["ours vs tutorial, both float32"]["head"]
    assert (same["min"], same["max"], same["median"]) == pytest.approx((4.0, 4.0, 4.0))
    bf16 = summary["ratios"]["what bf16 adds to the tutorial"]["finetune"]
    assert (bf16["min"], bf16["max"]) == pytest.approx((1.5, 2.0)) and bf16["median"] == pytest.approx(1.75)
    assert summary["pipelines"]["ours-same"]["head"]["median"] == pytest.approx(4.5)
    assert summary["pipelines"]["tutorial-float32"]["images_per_sec_end_to_end"]["n"] == 2


def test_augmentation_verdict_needs_every_seed_to_agree():
    assert verdict([-0.01, -0.02, -0.005], [0.001, 0.0, 0.002]) == "helps"
    assert verdict([-0.01, -0.02, -0.005], [0.001, -0.001, 0.002]) == "seeds disagree"  # one seed lost AUC
    assert verdict([0.01, 0.02, 0.005], [0.0, 0.0, 0.0]) == "hurts"
    assert verdict([0.01, -0.02, 0.005], [0.0, 0.0, 0.0]) == "seeds disagree"
    assert verdict([], []) == "seeds disagree"
