"""The Evaluate page's site-profile section: create a profile from a site's labelled folder, list the run's profiles, compare their figures."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from core.data.sample import local_path, portable_path, sample_root
from core.evaluation.sites import SiteError, calibrate_site, free_site_name, list_sites, read_site
from core.store.runs import Run, RunError
from dashboard import charts, resources, state

__all__ = ["render", "comparison_rows"]

_FIGURES = (("sensitivity", "Sensitivity", True), ("specificity", "Specificity", True),
            ("accuracy", "Accuracy", True), ("roc_auc", "ROC AUC", False))


def _value(value: float | None, ci: list | None, as_pct: bool) -> str:
    show = charts.pct if as_pct else charts.num
    text = show(value)
    if ci and ci[0] is not None:
        text += f" ({show(ci[0])}–{show(ci[1])})"
    return text


def comparison_rows(profile: dict[str, Any]) -> list[dict[str, str]]:
    """One row per figure: cross-fitted at the site's threshold, uncalibrated on the same films, the run's validation."""
    fitted, plain, val = profile["cross_fitted"], profile["uncalibrated"], profile.get("validation") or {}
    rows = []
    for key, label, as_pct in _FIGURES:
        fitted_ci = fitted["ci"].get(key) if key != "roc_auc" else plain["ci"].get(key)
        rows.append({"figure": label,
                     f"site threshold, cross-fitted ({fitted['n_splits']} halvings)": _value(fitted["mean"][key],
                                                                                        fitted_ci, as_pct),
                     f"run's threshold {profile['run_threshold']:.3f}, same films": _value(plain.get(key),
                                                                                        plain["ci"].get(key), as_pct),
                     "run's validation": _value(val.get(key), (val.get("ci") or {}).get(key), as_pct)})
    return rows


def _create(run: Run) -> None:
    with st.form(f"site-form-{run.id}", border=True):
        cols = st.columns([3, 2])
        folder = cols[0].text_input("Labelled site folder", value=portable_path(sample_root() / "test"),
                                    help="The site's films in class folders (NORMAL/, PNEUMONIA/), or the Kaggle "
                                         "layout; every split in it is used.")
        name = cols[1].text_input("Profile name", value="", placeholder="e.g. st-marys-2026",
                                  help="Letters, digits, '-', '_' or '.'; an existing name is never overwritten.")
        submitted = st.form_submit_button("Create site profile", icon=":material/add_location_alt:", type="primary")
    if not submitted:
        return
    if not name.strip():
        st.error("Give the profile a name first.", icon=":material/error:")
        return
    try:
        final = free_site_name(run, name)
    except SiteError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    if final != name.strip():
        st.info(f"A profile named **{name.strip()}** exists already (or the name had other characters): "
                f"this one is saved as **{final}**.", icon=":material/info:")
    path, modified = resources.model_key(run)
    where = folder if Path(folder).expanduser().exists() else local_path(folder)  # repository-relative default
    profile = state.with_progress(
        "Reading the site's films…", "No profile was made", (SiteError, RunError, ValueError, OSError),
        lambda progress: calibrate_site(run, where, final, model=resources.load_model(path, modified),
                                        progress=progress))
    if profile is None:
        return
    st.session_state.setdefault("site_of", {})[run.id] = profile["name"]  # the new profile is the one in use
    st.session_state[f"site-made-{run.id}"] = profile["name"]
    st.rerun()


def render(run: Run) -> None:
    """The section: what a site profile is, the run's profiles with their figures, and the form that makes one."""
    st.subheader("Site profiles: set the threshold on a hospital's own films")
    st.caption("A model's threshold was chosen on validation films carved from its own training set; another "
               "hospital's films can sit elsewhere on its probability scale. A site profile sets the threshold on "
               "that site's labelled films with the run's own rule and reports the figures cross-fitted: set on half "
               "the patients, scored on the other half, and the other way round, over 20 halvings. Choose the "
               "profile in use in the sidebar (**Threshold from**); Explain, Demo, `cxr-predict --site` and "
               "`cxr-serve --site` use it too.")
    made = st.session_state.pop(f"site-made-{run.id}", None)
    if made:
        st.success(f"Site profile **{made}** saved in the run folder (sites/{made}.json) and now in use.",
                   icon=":material/check_circle:")
    rows = list_sites(run)
    if not rows:
        st.info("This run has no site profile yet.", icon=":material/location_off:")
    else:
        table = [{"profile": r["name"], "created": str(r.get("created_at", ""))[:16].replace("T", " "),
                  "films": r.get("n"), "threshold": None if "error" in r else round(r["threshold"], 3),
                  "sensitivity (cross-fitted)": charts.pct((r.get("cross_fitted") or {}).get("sensitivity")),
                  "specificity (cross-fitted)": charts.pct((r.get("cross_fitted") or {}).get("specificity")),
                  **({"problem": r["error"]} if any("error" in row for row in rows) else {})} for r in rows]
        st.dataframe(table, hide_index=True, width="stretch")
        names = [r["name"] for r in rows if "error" not in r]
        if names:
            in_use = st.session_state.get("site_of", {}).get(run.id)
            shown = st.selectbox("Profile to compare", names, index=names.index(in_use) if in_use in names else 0,
                                 key=f"site-detail-{run.id}")
            profile = read_site(run, shown)
            st.dataframe(comparison_rows(profile), hide_index=True, width="stretch")
            counts = profile["counts"]
            st.caption(f"{profile['n']} films ({counts['NORMAL']} normal, {counts['PNEUMONIA']} pneumonia, "
                       f"{profile['n_patients']} patients) from `{profile['folder']}`; threshold "
                       f"{profile['threshold']:.3f} ({profile['method']}) set on all of them"
                       + (f", temperature {profile['temperature']:.2f}" if profile.get("temperature") else "")
                       + f"; 95 % patient-bootstrap intervals. Made {profile['created_at'].replace('T', ' ')}.")
            for warning in profile.get("warnings", []):
                st.warning(warning, icon=":material/warning:")
            if profile.get("skipped"):
                with st.expander(f"{len(profile['skipped'])} unreadable films skipped"):
                    st.dataframe(profile["skipped"], hide_index=True)
    _create(run)
