"""Evaluate: test-set figures of a finished run at a threshold you can move, curves, calibration, mistakes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from core.data.datasets import CLASS_NAMES
from core.data.splits import TEST_FILMS_NAME
from core.evaluation.ensemble import member_ids
from core.evaluation.metrics import compute_metrics
from dashboard import charts, resources, state

st.title("Evaluate")
run = state.pick_run()
if run is None:
    st.info("Nothing to evaluate yet: train a run first.", icon=":material/monitoring:")
    st.page_link(state.PAGES["train"], label="Go to Train", icon=":material/model_training:")
    st.stop()

metrics = run.metrics()
config = run.config()
if not metrics and not config.train.evaluate_test:
    st.info(f"Run **{charts.run_title(run)}** is a sweep member: it is compared with the other members on "
            "validation only and never evaluated on test, so that nobody chooses on test. Train the final run "
            "with the chosen settings on the **Sweep** page; that run is evaluated once on test.",
            icon=":material/grid_view:")
    st.page_link(state.PAGES["sweep"], label="Go to Sweep", icon=":material/grid_view:")
    st.stop()
if not metrics or not metrics.get("predictions"):
    st.warning(f"Run **{charts.run_title(run)}** has no test evaluation (metrics.json) yet. Runs are evaluated "
               "on the test split when training finishes; run `python -m core.evaluate "
               f"{run.id}` to evaluate it by hand.", icon=":material/inbox:")
    st.stop()

predictions = resources.run_predictions(run)  # files as paths on this machine
labels = np.array([p["label"] for p in predictions], dtype=int)
probabilities = np.array([p["probability"] for p in predictions], dtype=float)
run_threshold = float(metrics.get("threshold", run.threshold()))  # the one metrics.json and its intervals are at
info = metrics.get("threshold_info") or {}
point = state.pick_operating_point(run)  # the run's validation threshold, or a site profile's
start_threshold = point.threshold if point.site else run_threshold

saved = metrics.get("splits") or {}
own_films = saved.get("from") == TEST_FILMS_NAME  # a starter: metrics.json is on other films than splits.json's test
st.caption(f"Run **{charts.run_title(run)}** · {'test films' if own_films else 'test split'}: {len(labels)} images, "
           f"{int(labels.sum())} pneumonia, {metrics.get('n_patients', '?')} patients · data: {state.data_label(config)}"
           + (f" {state.SYNTHETIC_BADGE}" if state.is_synthetic(config) else "")
           + (f" · :material/stacks: ensemble of {len(member_ids(run))} runs" if member_ids(run) else ""))
state.model_card_downloads(run, key=f"evaluate-{run.id}")
if own_films:
    official = run.official_test_metrics()
    st.info(f"Every figure, curve and film below is on the **{len(labels)} test films of {TEST_FILMS_NAME}**, so that "
            f"this page works offline on any clone: {metrics.get('source', '')}. "
            + (f"On the full official test split it was tested on ({official['n']} images, {official['n_patients']} "
               f"patients; {run.starter.get('official_test_metrics')}): ROC AUC **{charts.num(official['roc_auc'])}** "
               f"(95 % CI {charts.num(official['ci']['roc_auc'][0])}–{charts.num(official['ci']['roc_auc'][1])}), "
               f"sensitivity **{charts.pct(official['sensitivity'])}** ({charts.pct(official['ci']['sensitivity'][0], 0)}"
               f"–{charts.pct(official['ci']['sensitivity'][1], 0)}), specificity **{charts.pct(official['specificity'])}** "
               f"({charts.pct(official['ci']['specificity'][0], 0)}–{charts.pct(official['ci']['specificity'][1], 0)}), "
               f"accuracy {charts.pct(official['accuracy'])} at threshold {official['threshold']:.3f}; the model card "
               "has all of it." if official else ""),
            icon=":material/verified:")
changes, skipped = saved.get("changes") or {}, metrics.get("skipped") or []
if saved.get("note"):
    st.info(f"Test split: {saved['note']}.", icon=":material/history:")
if changes.get("missing") or changes.get("changed") or changes.get("added"):
    st.warning(f"Data folder: {changes['summary']}. Only the saved test images were evaluated; missing and "
               "changed ones were skipped.", icon=":material/difference:")
if skipped or changes.get("added"):
    with st.expander(f"{len(skipped)} test image(s) skipped, {len(changes.get('added') or [])} added to the folder since"):
        if skipped:
            st.dataframe([{"file": Path(item["file"]).name, "why": item["reason"]} for item in skipped],
                         hide_index=True, width="stretch")
        if changes.get("added"):
            st.caption("Added since training (not part of this run's test split): "
                       + ", ".join(changes["added"][:50]) + (" …" if len(changes["added"]) > 50 else ""))


@st.cache_data(max_entries=512, show_spinner=False)
def metrics_at(run_id: str, modified: float, threshold: float) -> dict:
    """All figures at one threshold, recomputed from the saved per-image predictions (no model)."""
    return compute_metrics(labels, probabilities, threshold)


slider_key = f"threshold-{run.id}-{point.source}"
if slider_key not in st.session_state:
    st.session_state[slider_key] = round(start_threshold, 3)
top_left, top_right = st.columns([4, 1])
with top_left:
    threshold = st.slider("Decision threshold on P(pneumonia)", 0.0, 1.0, step=0.001, key=slider_key, format="%.3f",
                          help="An image is called PNEUMONIA when its probability is at least the threshold.")
with top_right:
    from core.config.catalog import describe_threshold_rule

    rule = describe_threshold_rule(info["method"], info.get("target_sensitivity") or 0.95) if info.get("method") else "?"
    if point.site:
        st.caption(f"Site profile **{point.site}**: threshold **{point.threshold:.3f}**, set on that site's films "
                   f"(the run's own: {run_threshold:.3f})")
    else:
        st.caption(f"Run's threshold: **{run_threshold:.3f}**  \nrule, fixed before training: {rule}; chosen on "
                   f"{info.get('chosen_on', 'validation')}")
    st.button("Reset", on_click=lambda: st.session_state.__setitem__(slider_key, round(start_threshold, 3)),
              disabled=abs(threshold - start_threshold) < 1e-3)

m = metrics_at(run.id, (run.path / "metrics.json").stat().st_mtime, float(threshold))
at_run = abs(threshold - run_threshold) < 1e-3
ci = metrics.get("ci", {}) if at_run else {}


def interval(key: str, as_pct: bool = True) -> str | None:
    lo, hi = ci.get(key, [None, None])
    if lo is None:
        return None
    return f"95 % CI {charts.pct(lo, 0)}–{charts.pct(hi, 0)}" if as_pct else f"95 % CI {lo:.3f}–{hi:.3f}"


cols = st.columns(6)
cols[0].metric("Sensitivity", charts.pct(m["sensitivity"]), help="Pneumonia images called pneumonia (recall, TPR).")
cols[1].metric("Specificity", charts.pct(m["specificity"]), help="Normal images called normal (TNR).")
cols[2].metric("ROC AUC", charts.num(m["roc_auc"]), help="Does not depend on the threshold.")
cols[3].metric("PR AUC", charts.num(m["pr_auc"]), help="Average precision; does not depend on the threshold.")
cols[4].metric("Accuracy", charts.pct(m["accuracy"]),
               help="Calling every image pneumonia already scores the share of pneumonia images "
                    f"({charts.pct(m['n_positive'] / m['n']) if m['n'] else 'n/a'} here).")
cols[5].metric("F1", charts.num(m["f1"]))
if ci:
    for column, key, as_pct in zip(cols, ("sensitivity", "specificity", "roc_auc", "pr_auc", "accuracy"),
                                   (True, True, False, False, True)):
        text = interval(key, as_pct)
        if text:
            column.caption(text)
    st.caption(metrics.get("ci_method", ""))

c = m["confusion"]
st.caption(f"At threshold {threshold:.3f}: **TP {c['tp']}** · **FN {c['fn']}** · **FP {c['fp']}** · **TN {c['tn']}**")

# ---------------------------------------------------------------------------------- charts
matrix_col, roc_col, pr_col = st.columns(3)
with matrix_col:
    z = [[c["tn"], c["fp"]], [c["fn"], c["tp"]]]
    fig = go.Figure(go.Heatmap(z=z, x=["NORMAL", "PNEUMONIA"], y=["NORMAL", "PNEUMONIA"],
                               text=[[f"TN<br>{c['tn']}", f"FP<br>{c['fp']}"], [f"FN<br>{c['fn']}", f"TP<br>{c['tp']}"]],
                               texttemplate="%{text}", textfont=dict(size=18), colorscale="Blues", showscale=False))
    fig.update_layout(title="Confusion matrix", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      yaxis=dict(autorange="reversed", title="true label"), xaxis=dict(side="bottom", title="called"))
    charts.chart(fig, key="confusion")
with roc_col:
    fig = go.Figure(go.Scatter(x=m["roc"]["fpr"], y=m["roc"]["tpr"], mode="lines", name="ROC",
                               line=dict(color=charts.TRAIN_COLOUR)))
    fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="chance"))
    if m["specificity"] is not None and m["sensitivity"] is not None:
        fig.add_trace(go.Scatter(x=[1 - m["specificity"]], y=[m["sensitivity"]], mode="markers", name="threshold",
                                 marker=dict(size=14, color=charts.VAL_COLOUR, line=dict(width=2, color="white"))))
    fig.update_layout(title=f"ROC curve (AUC {charts.num(m['roc_auc'])})", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="1 − specificity", yaxis_title="sensitivity", showlegend=False)
    charts.chart(fig, key="roc")
with pr_col:
    fig = go.Figure(go.Scatter(x=m["pr"]["recall"], y=m["pr"]["precision"], mode="lines", line=dict(color=charts.TRAIN_COLOUR)))
    if m["precision"] is not None and m["sensitivity"] is not None:
        fig.add_trace(go.Scatter(x=[m["sensitivity"]], y=[m["precision"]], mode="markers", name="threshold",
                                 marker=dict(size=14, color=charts.VAL_COLOUR, line=dict(width=2, color="white"))))
    fig.update_layout(title=f"Precision–recall (AP {charts.num(m['pr_auc'])})", height=340, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis_title="recall (sensitivity)", yaxis_title="precision", showlegend=False,
                      yaxis=dict(range=[0, 1.05]))
    charts.chart(fig, key="pr")

cal_col, table_col = st.columns([1, 1])
with cal_col:
    cal = m["calibration"]
    fig = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line=dict(dash="dot", color="gray"), name="perfect"))
    fig.add_trace(go.Scatter(x=cal["prob_pred"], y=cal["prob_true"], mode="lines+markers", name="this model",
                             line=dict(color=charts.TRAIN_COLOUR),
                             text=[f"{n} images" for n in cal.get("count", [])], hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(title=f"Calibration (Brier {charts.num(cal.get('brier'))})", height=320,
                      margin=dict(l=10, r=10, t=40, b=10), xaxis_title="predicted probability",
                      yaxis_title="observed pneumonia fraction", showlegend=False)
    charts.chart(fig, key="calibration")
with table_col:
    st.markdown("**At the run's threshold vs at 0.5**")
    half = metrics.get("at_0.5") or {}
    rows = {"": ["sensitivity", "specificity", "accuracy", "precision", "F1"]}
    table = {
        f"threshold {run_threshold:.3f}": [charts.pct(metrics.get(k)) if k != "f1" else charts.num(metrics.get(k))
                                           for k in ("sensitivity", "specificity", "accuracy", "precision", "f1")],
        "threshold 0.5": [charts.pct(half.get(k)) if k != "f1" else charts.num(half.get(k))
                          for k in ("sensitivity", "specificity", "accuracy", "precision", "f1")],
    }
    st.dataframe({**rows, **table}, hide_index=True, width="stretch")
    groups = metrics.get("subgroups") or {}
    if groups:
        st.markdown("**Sensitivity per pneumonia type** (at the run's threshold)")
        st.dataframe([{"type": name, "images": g["n"], "missed": g["missed"], "sensitivity": charts.pct(g["sensitivity"]),
                       "95 % CI": (f"{charts.pct(g['sensitivity_ci'][0], 0)}–{charts.pct(g['sensitivity_ci'][1], 0)}"
                                   if (g.get("sensitivity_ci") or [None])[0] is not None else "—")}
                      for name, g in groups.items()], hide_index=True, width="stretch")

# ---------------------------------------------------------------------------------- mistakes
st.subheader("Mistakes at this threshold")
wrong = [(i, p) for i, p in enumerate(predictions) if (p["probability"] >= threshold) != bool(p["label"])]
# Most confident first: the further from the threshold on the wrong side, the worse.
wrong.sort(key=lambda item: -abs(item[1]["probability"] - threshold))
if not wrong:
    st.success("No test image is misclassified at this threshold.", icon=":material/target:")
else:
    st.caption(f"{len(wrong)} misclassified: {sum(1 for _, p in wrong if p['label'] == 1)} missed pneumonia, "
               f"{sum(1 for _, p in wrong if p['label'] == 0)} false alarms. Most confident mistakes first; "
               "open one in Explain to see where the model looked.")
    shown = st.select_slider("Show", [6, 12, 24, 48], value=12, key="mistakes_shown") if len(wrong) > 6 else 6
    per_row = 6
    items = wrong[:shown]
    for start in range(0, len(items), per_row):
        for column, (i, p) in zip(st.columns(per_row), items[start:start + per_row]):
            with column:
                thumb = resources.thumbnail(p["file"])
                truth = CLASS_NAMES[p["label"]]
                if thumb is not None:
                    st.image(thumb, width="stretch")
                else:
                    st.caption("(image not found)")
                st.caption(f"{Path(p['file']).name}  \ntrue **{truth}** · P(pneumonia) {p['probability']:.2f}")
                if st.button("Explain", key=f"explain-{i}", icon=":material/search_insights:", width="stretch"):
                    st.session_state["explain_file"] = p["file"]
                    st.switch_page(state.PAGES["explain"])
    state.data_citation(config, own_films and resources.films_from_sample(run))

# ---------------------------------------------------------------------------------- shortcut audit
st.subheader("Shortcut audit")
st.caption("Does the model read the film's edges — laterality markers, burnt-in text, collimation — rather than the "
           "lungs? Such shortcuts are documented for chest X-ray models (Zech et al., PLOS Medicine 2018; DeGrave, "
           "Janizek & Lee, Nature Machine Intelligence 2021).")
from core.evaluation.audit import audit_picture, audit_reading, read_audit, shortcut_audit  # noqa: E402

audit = read_audit(run)
if audit is None:
    st.markdown("The audit asks whether the model's calls hold without the film's border (the outer 10 % of each "
                "side, replaced by a blurred copy of the film), without its laterality letters, text and clips "
                "(found near the edges and inpainted), and regardless of the film's original shape; and where its "
                "Grad-CAM sits. It is saved with the run (audit.json), so it runs once.")
    if st.button("Run the shortcut audit", icon=":material/policy:", key=f"audit-{run.id}", type="primary"):
        from core.data.datasets import DatasetError
        from core.store.runs import RunError

        bar = st.progress(0.0, text="Starting the audit…")
        try:
            shortcut_audit(run, progress=lambda fraction, message: bar.progress(min(fraction, 1.0), text=message))
        except (RunError, DatasetError, ValueError, OSError) as exc:
            bar.empty()
            st.error(f"The audit could not run: {exc}", icon=":material/error:")
        else:
            st.rerun()  # show the saved audit, without the button
if audit is not None:
    border, markers = audit["border"], audit["markers"]
    band_text = (f"border band: the outer {charts.pct(audit['border_fraction'], 0)} of each side ({audit['border_px']} px at "
                 f"{audit['image_size']} px)")
    cols = st.columns(4)
    cols[0].metric("Calls that change without the border", f"{border['flipped']} of {border['n']}",
                   help=f"At the run's threshold, with the {band_text} replaced by a blurred copy of the film. "
                        "More than 3 % means the calls depend on the border, whatever the AUC does.")
    cols[1].metric("Calls that change without markers",
                   f"{markers['flipped']} of {markers['films']}" if markers["films"] else "no markers found",
                   help="Letters, text and clips found near the edges, inpainted; counted over the films that have them.")
    cols[2].metric("Test ROC AUC", charts.num(audit["auc"]))
    change = (audit["auc_border_neutral"] - audit["auc"]) if audit["auc"] is not None and audit["auc_border_neutral"] is not None else None
    cols[3].metric("ROC AUC without the border", charts.num(audit["auc_border_neutral"]),
                   delta=None if change is None else f"{change:+.3f}", delta_color="normal")
    for line in audit_reading(audit):
        st.markdown(f"- {line}")
    rows = [{"true class": name, "films": c["n"], "calls changed without the border": c["flipped"],
             "mean Δp without the border": round(c["mean_delta"], 3),
             "calls changed without markers": (markers["per_class"].get(name) or {}).get("flipped", 0),
             "heatmap in the border band": charts.pct(audit["per_class"][name]["border_share"], 0),
             "ρ(P, width/height)": "n/a" if (audit["shape"].get(name) or {}).get("rho") is None
             else f"{audit['shape'][name]['rho']:+.2f}"}
            for name, c in border["per_class"].items()]
    st.dataframe(rows, hide_index=True, width="stretch")
    pictures = st.columns(4)
    for column, name in zip(pictures, audit["per_class"]):
        entry = audit["per_class"][name]
        column.image(audit_picture(audit, name), width="stretch",
                     caption=f"Mean Grad-CAM, true {name} ({entry['n']} films): {charts.pct(entry['border_share'], 0)} "
                             "in the band (outside the white frame)")
    with pictures[2]:
        lo, hi = audit.get("auc_change_ci") or (None, None)
        st.caption(f"Grad-CAM at layer `{audit['layer']}`, explaining {audit['target']} (as on Explain and Demo); "
                   f"{band_text}, filled with {audit['border_fill']}, through the same input path the model was "
                   "evaluated on. "
                   + (f"95 % CI of the AUC change {lo:+.3f} to {hi:+.3f} (patient bootstrap, {audit['n_patients']} "
                      "patients). " if lo is not None else "")
                   + f"Audited {audit['created_at'].replace('T', ' ')} in {audit['seconds']:.0f} s.")

from dashboard.views import sites as site_profiles  # noqa: E402  (the section's own imports wait until here)

site_profiles.render(run)
