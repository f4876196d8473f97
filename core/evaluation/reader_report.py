"""The reader study's exports: the table of figures, one CSV row per film per reader, and a one-page PNG (ROC, table, notice)."""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from typing import Any

from core.data.datasets import CLASS_NAMES
from core.evaluation.case_report import DISCLAIMER, plain_text, wrap_text
from core.evaluation.reader_stats import Curve, Proportion, ReaderFigures, wilson
from core.evaluation.readers import Film, ReaderSession

__all__ = ["READER_COLOURS", "MODEL_COLOUR", "CSV_COLUMNS", "figure_rows", "model_row", "export_csv", "reader_png"]

# One colour per reader, in order (readable on white and on the dashboard's dark theme); the model's is grey-blue.
READER_COLOURS = ("#E45756", "#F58518", "#54A24B", "#B279A2", "#EECA3B", "#FF9DA6", "#9D755D", "#72B7B2")
MODEL_COLOUR = "#4C78A8"
CSV_COLUMNS = ("reader", "session", "film", "sha256", "truth", "reader_call", "confidence", "rating",
               "model_probability", "model_call", "threshold", "threshold_from", "status", "answered_at")


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.1f} %"


def _ci(share: Proportion) -> str:
    return "—" if share.low is None else f"{100 * share.low:.1f}–{100 * share.high:.1f} %"


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def figure_rows(figures: Sequence[ReaderFigures]) -> list[dict[str, str]]:
    """One row of text per reader session: what the results view's table and the PNG show."""
    return [{"Reader session": f.session, "Films": str(f.n),
             "Sensitivity": _pct(f.sensitivity.value), "Sensitivity 95 % CI": _ci(f.sensitivity),
             "Specificity": _pct(f.specificity.value), "Specificity 95 % CI": _ci(f.specificity),
             "Reader ROC AUC": _num(f.reader_roc.auc), "κ with the model": _num(f.kappa),
             "Same call as the model": _pct(f.agreement.value),
             "McNemar p": _num(f.mcnemar.p_value),
             "Right where the other is wrong (reader / model)": f"{f.mcnemar.reader_only} / {f.mcnemar.model_only}"}
            for f in figures]


def model_row(films: Sequence[Film], threshold: float, curve: Curve) -> dict[str, str]:
    """The model's row of the table, over ``films`` at ``threshold`` (the reader-only columns left empty)."""
    positives = [f for f in films if f.label == 1]
    negatives = [f for f in films if f.label == 0]
    sens = wilson(sum(f.probability >= threshold for f in positives), len(positives))
    spec = wilson(sum(f.probability < threshold for f in negatives), len(negatives))
    return {"Reader session": f"Model (threshold {threshold:.3f})", "Films": str(len(films)),
            "Sensitivity": _pct(sens.value), "Sensitivity 95 % CI": _ci(sens),
            "Specificity": _pct(spec.value), "Specificity 95 % CI": _ci(spec),
            "Reader ROC AUC": f"{_num(curve.auc)} (model)", "κ with the model": "", "Same call as the model": "",
            "McNemar p": "", "Right where the other is wrong (reader / model)": ""}


def export_csv(sessions: Sequence[ReaderSession], threshold: float, threshold_from: str) -> str:
    """One row per film per reader session: film id, truth, the reader's call and confidence, the model's
    probability and call at ``threshold`` (from ``threshold_from``), and whether the film was read."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for session in sessions:
        answered = session.answered
        skipped = {s["film"]: s["reason"] for s in session.skipped}
        for film in session.films:
            answer = answered.get(film.film)
            status = ("answered" if answer else f"skipped: {skipped[film.film]}" if film.film in skipped
                      else "not read yet")
            writer.writerow({"reader": session.reader, "session": session.name, "film": film.film,
                             "sha256": film.sha256, "truth": CLASS_NAMES[film.label],
                             "reader_call": CLASS_NAMES[answer.call] if answer else "",
                             "confidence": answer.confidence if answer else "",
                             "rating": answer.score if answer else "",
                             "model_probability": f"{film.probability:.6f}",
                             "model_call": CLASS_NAMES[int(film.probability >= threshold)],
                             "threshold": f"{threshold:.6f}", "threshold_from": threshold_from, "status": status,
                             "answered_at": answer.answered_at if answer else ""})
    return out.getvalue()


def _dashed(draw: Any, points: Sequence[tuple[float, float]], colour: str, dash: float = 9.0) -> None:
    """A polyline drawn in dashes of ``dash`` pixels, dash and gap alike."""
    drawn = 0.0  # the length walked so far; dashes where it is in an even multiple of ``dash``
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = ((x1 - x0) ** 2 + (y1 - y0) ** 2) ** 0.5
        at = 0.0
        while at < length:
            step = min(dash - drawn % dash, length - at)
            if int(drawn // dash) % 2 == 0:
                a, b = at / length, (at + step) / length
                draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                          fill=colour, width=3)
            at += step
            drawn += step


def _roc_panel(draw: Any, box: tuple[int, int, int], figures: Sequence[ReaderFigures], model: Curve,
               threshold_point: tuple[float, float] | None, fonts: dict[str, Any]) -> None:
    """The ROC axes at ``box`` = (left, top, side): the model's curve, each reader's curve and their call as a point."""
    left, top, side = box

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return left + fpr * side, top + (1 - tpr) * side

    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        draw.line([xy(tick, 0), xy(tick, 1)], fill=(225, 225, 225))
        draw.line([xy(0, tick), xy(1, tick)], fill=(225, 225, 225))
        draw.text((xy(tick, 0)[0] - 10, top + side + 6), f"{tick:.1f}", font=fonts["small"], fill=(60, 60, 60))
        draw.text((left - 34, xy(0, tick)[1] - 8), f"{tick:.1f}", font=fonts["small"], fill=(60, 60, 60))
    draw.line([xy(0, 0), xy(1, 1)], fill=(190, 190, 190))
    draw.rectangle([left, top, left + side, top + side], outline=(40, 40, 40))
    draw.text((left + side / 2 - 120, top + side + 28), "1 - specificity (false-positive rate)", font=fonts["text"],
              fill=(20, 20, 20))
    draw.text((left - 34, top - 28), "sensitivity", font=fonts["text"], fill=(20, 20, 20))
    draw.line([xy(f, t) for f, t in zip(model.fpr, model.tpr)], fill=MODEL_COLOUR, width=4)
    if threshold_point is not None:
        x, y = xy(*threshold_point)
        draw.rectangle([x - 7, y - 7, x + 7, y + 7], outline=MODEL_COLOUR, width=3)
    for i, f in enumerate(figures):
        colour = READER_COLOURS[i % len(READER_COLOURS)]
        _dashed(draw, [xy(a, b) for a, b in zip(f.reader_roc.fpr, f.reader_roc.tpr)], colour)  # from the ratings
        if f.sensitivity.value is not None and f.specificity.value is not None:
            x, y = xy(1 - f.specificity.value, f.sensitivity.value)
            draw.ellipse([x - 9, y - 9, x + 9, y + 9], fill=colour, outline=(20, 20, 20))


def reader_png(figures: Sequence[ReaderFigures], films: Sequence[Film], threshold: float, run: str,
               threshold_label: str, model: Curve, width: int = 1240) -> bytes:
    """The reader study on one page (at most A4 proportions): the ROC with the model's curve over the same films, its
    operating point and each reader's call and curve; the table of figures; the method; the notice (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont  # heavy: Pillow's fonts load on first use

    fonts = {name: ImageFont.load_default(size=size) for name, size in
             (("title", 34), ("head", 22), ("text", 18), ("small", 15))}
    page = Image.new("RGB", (width, round(width * 1.414)), "white")
    draw = ImageDraw.Draw(page)
    pad = 48
    draw.text((pad, pad), "cxr-studio - reader study", font=fonts["title"], fill=(20, 20, 20))
    y = pad + 50
    for line in wrap_text(draw, plain_text(f"Run: {run}. The model calls pneumonia at {threshold:.3f}: {threshold_label}."),
                      fonts["text"], width - 2 * pad):
        draw.text((pad, y), line, font=fonts["text"], fill=(60, 60, 60))
        y += 26
    side = 640
    positives = [f for f in films if f.label == 1]
    negatives = [f for f in films if f.label == 0]
    point = ((sum(f.probability >= threshold for f in negatives) / len(negatives),
              sum(f.probability >= threshold for f in positives) / len(positives)) if positives and negatives else None)
    _roc_panel(draw, (pad + 50, y + 40, side), figures, model, point, fonts)
    legend_x, legend_y = pad + 50 + side + 40, y + 40
    entries = [(MODEL_COLOUR, f"Model over the {len(films)} films read (AUC {_num(model.auc)}); "
                              "square: its operating point")]
    entries += [(READER_COLOURS[i % len(READER_COLOURS)],
                 f"{f.session}: the call (dot) and the ROC of the ratings (dashes), AUC {_num(f.reader_roc.auc)}")
                for i, f in enumerate(figures)]
    for colour, text in entries:
        draw.rectangle([legend_x, legend_y + 4, legend_x + 18, legend_y + 18], fill=colour)
        for line in wrap_text(draw, plain_text(text), fonts["small"], width - pad - legend_x - 28):
            draw.text((legend_x + 28, legend_y), line, font=fonts["small"], fill=(40, 40, 40))
            legend_y += 21
        legend_y += 8
    y += 40 + side + 70
    rows = [model_row(films, threshold, model), *figure_rows(figures)]
    columns = [("Reader session", 250), ("Films", 60), ("Sensitivity (95 % CI)", 200), ("Specificity (95 % CI)", 200),
               ("ROC AUC", 120), ("Kappa", 80), ("McNemar p", 100), ("R / M", 100)]
    x = pad
    for name, w in columns:
        draw.text((x, y), name, font=fonts["small"], fill=(20, 20, 20))
        x += w
    y += 24
    draw.line([(pad, y), (width - pad, y)], fill=(120, 120, 120))
    y += 6
    for row in rows[:24]:  # a page holds this many readers
        cells = [row["Reader session"][:30], row["Films"], f"{row['Sensitivity']} ({row['Sensitivity 95 % CI']})",
                 f"{row['Specificity']} ({row['Specificity 95 % CI']})", row["Reader ROC AUC"],
                 row["κ with the model"], row["McNemar p"], row["Right where the other is wrong (reader / model)"]]
        x = pad
        for (_, w), cell in zip(columns, cells):
            draw.text((x, y), plain_text(cell), font=fonts["small"], fill=(40, 40, 40))
            x += w
        y += 24
    y += 16
    method = ("Sensitivity and specificity with 95 % Wilson intervals. Reader ROC from the call and the 1-5 "
              "confidence as one 10-level rating. Kappa: Cohen's kappa of the reader's calls against the model's. "
              "McNemar: exact two-sided test on the films where only one of reader and model is right "
              "(R / M: right only for the reader / only for the model). Readers were blinded to label and model.")
    for text, font, colour in ((method, fonts["small"], (90, 90, 90)), (DISCLAIMER, fonts["head"], (170, 30, 30))):
        for line in wrap_text(draw, plain_text(text), font, width - 2 * pad):
            draw.text((pad, y), line, font=font, fill=colour)
            y += int(font.size * 1.45)
        y += 10
    buffer = io.BytesIO()
    page = page.crop((0, 0, width, min(page.height, y + pad)))  # one page, as long as its content
    page.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
