"""The shift report in words: how different the new films are, what may explain it, and whether to make a site profile first."""
from __future__ import annotations

from typing import Any

from core.evaluation.shift_stats import STORAGE_STATS

__all__ = ["DISTINCT_AUC", "RATE_GAP", "KS_NOTABLE", "domain_words", "recommend_site_profile", "shift_reading"]

DISTINCT_AUC = 0.7  # the domain classifier tells the sides apart this well: the films differ for the model
RATE_GAP = 0.05  # and a predicted-positive rate this far from what validation predicts (p < RATE_P) is a shift too
RATE_P = 0.01
KS_NOTABLE = 0.3  # a film statistic whose two-sample Kolmogorov–Smirnov D reaches this is named
_WORDS = ((0.6, "hardly at all"), (0.7, "a little"), (0.8, "moderately well"), (0.9, "clearly"),
          (float("inf"), "almost perfectly"))


def domain_words(auc: float) -> str:
    """How well a domain classifier of this ROC AUC tells two sets apart: "hardly at all" … "almost perfectly"."""
    return next(words for limit, words in _WORDS if auc < limit)


def _distinct(report: dict[str, Any]) -> bool:
    domain = report["domain"]
    low = (domain.get("ci") or [None])[0]
    return domain["auc"] >= DISTINCT_AUC and (low is None or low > 0.5)


def _rate_shift(report: dict[str, Any]) -> bool:
    rates = report["positive_rate"]
    expected = rates.get("expected")
    if expected:  # labelled films: against the rate validation's sensitivity and specificity predict here
        return expected["p_value"] < RATE_P and abs(rates["new"]["rate"] - expected["rate"]) >= RATE_GAP
    if not rates.get("validation") or rates.get("p_value") is None:
        return False
    return rates["p_value"] < RATE_P and abs(rates["new"]["rate"] - rates["validation"]["rate"]) >= RATE_GAP


def _more_or_fewer(report: dict[str, Any]) -> str:
    rates = report["positive_rate"]
    reference = (rates.get("expected") or rates.get("validation") or {}).get("rate")
    return "more" if reference is None or rates["new"]["rate"] > reference else "fewer"


def _auc(value: float) -> str:
    return f"{value:.3f}" if value >= 0.99 or value <= 0.01 else f"{value:.2f}"  # not "1.00" for 0.998


def recommend_site_profile(report: dict[str, Any]) -> bool:
    """Whether to make a site profile before using the run on these films: they look different to the model
    (domain AUC ≥ :data:`DISTINCT_AUC`, its interval above 0.5), or it calls a clearly different share positive."""
    return _distinct(report) or _rate_shift(report)


def _value(stat: str, value: float) -> str:
    if stat in ("width", "height", "file_kb"):
        return f"{value:,.0f}"
    if stat == "aspect_ratio":
        return f"{value:.2f}"
    if stat == "dark_share":
        return f"{value:.1%}"
    return f"{value:.1f}"


def _names(files: list[str], most: int = 3) -> str:
    shown = ", ".join(f.rsplit("/", 1)[-1] for f in files[:most])
    return shown + (f" and {len(files) - most} more" if len(files) > most else "")


def _notable(report: dict[str, Any], storage: bool) -> list[str]:
    rows = sorted((row for row in report["films"]["compare"] if (row["stat"] in STORAGE_STATS) == storage
                   and row["ks"] is not None and row["ks"] >= KS_NOTABLE and row["p"] < 0.01),
                  key=lambda row: -row["ks"])[:3]
    return [f"{row['label']}: median {_value(row['stat'], row['new']['median'])} here against "
            f"{_value(row['stat'], row['training']['median'])} in training (KS D {row['ks']:.2f})" for row in rows]


def _films(report: dict[str, Any]) -> str:
    stored, seen = _notable(report, storage=True), _notable(report, storage=False)
    text = ("In shape and intensity (intensities of the model's input) the films differ most in " + "; ".join(seen)
            + "." if seen else "Their shapes and intensities (of the model's input) are alike: no statistic differs "
                               f"by a Kolmogorov–Smirnov D of {KS_NOTABLE} or more.")
    return text + (" As stored, they differ in " + "; ".join(stored) + "." if stored else "")


def _rates(report: dict[str, Any]) -> str:
    rates = report["positive_rate"]
    new, val = rates["new"], rates.get("validation")
    text = (f"At the run's threshold {rates['threshold']:.3f} the model calls {new['rate']:.0%} of the new films "
            f"pneumonia ({new['k']} of {new['n']}, 95 % CI {new['ci'][0]:.0%}–{new['ci'][1]:.0%})")
    if not val:
        return text + "; the run saved no validation probabilities to compare with."
    text += (f", against {val['rate']:.0%} of its validation films ({val['ci'][0]:.0%}–{val['ci'][1]:.0%}; "
             f"Fisher's exact p = {rates['p_value']:.2g}).")
    expected = rates.get("expected")
    if expected:
        text += (f" By their labels {new['prevalence']:.0%} of the new films are pneumonia; with its validation "
                 f"sensitivity ({expected['sensitivity']:.0%}) and specificity ({expected['specificity']:.0%}) the "
                 f"model would call about {expected['rate']:.0%} of them pneumonia (binomial p = "
                 f"{expected['p_value']:.2g} for the {new['rate']:.0%} it calls).")
    else:
        text += (" Without labels this compares case mixes as well as films: a site with more pneumonia is called "
                 "positive more often without any shift in its films.")
    return text


def shift_reading(report: dict[str, Any]) -> list[str]:
    """The report in plain words, one finding per sentence, ending with whether to make a site profile first."""
    domain = report["domain"]
    lo, hi = domain.get("ci") or [None, None]
    interval = f"95 % CI {_auc(lo)}–{_auc(hi)}; " if lo is not None else ""
    covers = " No difference is detectable." if lo is not None and lo <= 0.5 <= hi else ""
    lines = [report["training_side"],
             f"A linear model on the run's own pooled features tells the new films from the training films "
             f"{domain_words(domain['auc'])}: ROC AUC {_auc(domain['auc'])} ({interval}0.5 means it cannot tell them "
             f"apart), out of fold over {domain['n_new']} new and {domain['n_train']} training films.{covers}"]
    signature = report["training"].get("signature") or []
    if signature:
        staged = any("224 × 224" in s for s in signature)
        lines.append("The two sides are not stored alike: " + "; ".join(signature) + ". That processing signature "
                     "alone lets a network tell films apart, so the AUC measures the processing as much as the "
                     "films" + (" (the staged Kaggle training copy is such a copy: squashed to 224 × 224, converted "
                                "to RGB and re-saved as JPEG quality 75)" if staged else "")
                     + ". To compare like with like, let copies of the training films stored like the new ones "
                       "stand for the training side.")
    lines += [_films(report), _rates(report)]
    leaks = report.get("leaks") or {}
    if leaks.get("identical"):
        lines.append(f"{len(leaks['identical'])} films are byte-identical to films the run trained or validated on "
                     f"({_names(leaks['identical'])}): a leak, not new films, so they were left out.")
    if leaks.get("same_patient"):
        lines.append(f"{len(leaks['same_patient'])} films carry a patient id the run trained or validated on; they "
                     "were kept, as an id can name another person (the Kaggle set numbers patients per split).")
    if report.get("skipped"):
        lines.append(f"{len(report['skipped'])} unreadable files were skipped: "
                     f"{_names([s['file'] for s in report['skipped']])}.")
    if recommend_site_profile(report):
        why = " and ".join(reason for reason, holds in (
            ("the films look different to the model", _distinct(report)),
            (f"it calls {_more_or_fewer(report)} of them pneumonia than "
             + ("its validation sensitivity and specificity predict" if report["positive_rate"].get("expected")
                else "of its validation films"), _rate_shift(report))) if holds)
        how = ("This folder is labelled, so its films can make the profile" if report.get("labelled") else
               "Label at least 20 films of each class from the site and make the profile from them")
        lines.append(f"Make a site profile before using this run there: {why}. {how} (Evaluate → Site profiles, "
                     "or cxr-site calibrate).")
    else:
        lines.append("Nothing here calls for a site profile first: the model finds these films much like its "
                     "training films and calls about as many pneumonia as on validation. Only labelled films of the "
                     "site can show its sensitivity and specificity there.")
    return lines
