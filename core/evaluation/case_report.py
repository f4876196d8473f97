"""The one-case PNG export of the Demo page: the film, its Grad-CAM overlay, the call and the not-for-diagnosis notice in one image."""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["DISCLAIMER", "CaseReport", "case_png", "plain_text", "wrap_text"]

DISCLAIMER = ("For research and education only — not for diagnosis. This model is not a medical device and "
              "must not guide patient care.")


@dataclass
class CaseReport:
    """What one exported case shows."""

    film: np.ndarray  # uint8 grayscale (H, W), as displayed
    overlay: np.ndarray  # uint8 RGB (H, W, 3), the Grad-CAM overlay of the same film
    probability: float  # P(pneumonia)
    threshold: float
    run: str  # the run in words (title and id)
    case: str  # file name, or "uploaded image"
    truth: str | None = None  # "NORMAL" / "PNEUMONIA" when known
    citation: str | None = None  # the data set's citation when the film comes from it


def _fit(image: np.ndarray, height: int) -> "Image.Image":
    from PIL import Image

    img = Image.fromarray(np.asarray(image, dtype=np.uint8))
    width = max(1, round(img.width * height / img.height))
    return img.convert("RGB").resize((width, height), Image.LANCZOS)


def wrap_text(draw: Any, text: str, font: Any, width: int) -> list[str]:
    """``text`` broken into lines no wider than ``width`` pixels in ``font`` (a word longer than that keeps a line)."""
    lines, current = [], ""
    for word in text.split():
        trial = f"{current} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not current:
            current = trial
        else:
            lines.append(current)
            current = word
    return lines + ([current] if current else [])


def plain_text(text: str) -> str:
    """Characters Pillow's built-in font has no glyph for, spelled out (dashes as hyphens, κ as kappa)."""
    return text.replace("—", "-").replace("–", "-").replace("κ", "kappa")


def case_png(case: CaseReport, height: int = 560) -> bytes:
    """One case as a PNG: film and Grad-CAM overlay side by side, the probability, threshold, call, run,
    the not-for-diagnosis notice and, for films of a cited data set, its citation (built with Pillow)."""
    from PIL import Image, ImageDraw, ImageFont

    film, heat = _fit(case.film, height), _fit(case.overlay, height)
    pad, gap = 32, 16
    width = max(pad * 2 + film.width + gap + heat.width, 900)
    title_font, big, text_font, small = (ImageFont.load_default(size=s) for s in (30, 26, 20, 16))
    called = "PNEUMONIA" if case.probability >= case.threshold else "NORMAL"
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    body = [(f"P(pneumonia) {100 * case.probability:.1f} %  ·  threshold {100 * case.threshold:.1f} %  ·  "
             f"called {called}", big, (20, 20, 20))]
    body.append((f"True label: {case.truth} (from the data set)" if case.truth else
                 "True label: unknown", text_font, (60, 60, 60)))
    body.append((f"Case: {case.case}", text_font, (60, 60, 60)))
    body.append((f"Run: {case.run}", text_font, (60, 60, 60)))
    body.append(("Left: the film as shown. Right: Grad-CAM overlay, warm colours mark what drove the answer.",
                 small, (90, 90, 90)))
    footer = [(line, text_font, (170, 30, 30)) for line in wrap_text(probe, plain_text(DISCLAIMER), text_font, width - 2 * pad)]
    if case.citation:
        footer += [(line, small, (90, 90, 90)) for line in
                   wrap_text(probe, f"Film: {case.citation}", small, width - 2 * pad)]
    line_height = {id(f): int(f.size * 1.45) for f in (title_font, big, text_font, small)}
    header_h = pad + line_height[id(title_font)] + 8
    text_h = sum(line_height[id(f)] for _, f, _ in body) + 12
    footer_h = sum(line_height[id(f)] for _, f, _ in footer) + pad
    canvas = Image.new("RGB", (width, header_h + height + gap + text_h + footer_h), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((pad, pad), "cxr-studio - one case", font=title_font, fill=(20, 20, 20))
    canvas.paste(film, (pad, header_h))
    canvas.paste(heat, (pad + film.width + gap, header_h))
    y = header_h + height + gap
    for text, font, colour in body + footer:
        draw.text((pad, y), plain_text(text), font=font, fill=colour)
        y += line_height[id(font)]
    buffer = io.BytesIO()
    canvas.save(buffer, "PNG", optimize=True)
    return buffer.getvalue()
