"""The starter-choice rule, as written before any candidate existed: no worse on validation, small enough, shape-free first."""
from __future__ import annotations

from benchmarks.starter_choice import choose


def _run(name: str, *, change=(-0.002, 0.003), mb=7.4, loss=0.10, rho_ci=((-0.1, 0.2), (-0.2, 0.1))) -> dict:
    cue = {cls: {"n": 50, "rho": (lo + hi) / 2, "ci": [lo, hi]} for cls, (lo, hi) in zip(("NORMAL", "PNEUMONIA"), rho_ci)}
    return {"run": name, "roc_auc": 0.99, "auc_change_ci": list(change), "model_mb": mb, "log_loss": loss,
            "shape_cue": cue}


def test_the_starter_stays_when_every_candidate_is_worse_beyond_chance_or_too_big():
    starter = _run("starter")
    worse = _run("worse", change=(-0.02, -0.001))
    big = _run("big", mb=25.0)
    decision = choose(starter, [worse, big])
    assert decision["chosen"] == "starter" and "stays" in decision["why"]


def test_a_candidate_that_does_not_follow_the_film_shape_wins_over_a_lower_loss_that_does():
    starter = _run("starter")
    shaped = _run("shaped", loss=0.05, rho_ci=((0.1, 0.5), (0.2, 0.6)))
    free = _run("free", loss=0.09)
    decision = choose(starter, [shaped, free])
    assert decision["chosen"] == "free" and "shape cue absent" in decision["why"]
    assert choose(starter, [shaped])["chosen"] == "shaped"  # no worse on validation: it may still replace the starter
