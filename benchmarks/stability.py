"""Stability of a run's calls under small acquisition shifts: how many calls flip, and how far P moves, when a film is cropped, re-exposed, recompressed, blurred, halved or marked.

    python -m benchmarks.stability RUN_DIR [RUN_DIR …] [--data ../shared/data/chest_xray] [--films N | --quick]
        [--out benchmarks/results/stability.json]

A second hospital's scanner, crop and compression differ a little from the training site's. For
each official test film (the final evaluation's films: nothing is chosen here) the film is decoded
once at full resolution, each shift below is applied to it, and the result goes through the tail of
the one image path (``core.data.images.resize_gray``) to the run's model. The baseline is the same
film through the same route without a shift. For each shift: the share of calls that flip at the
run's threshold, per true class, and the mean |Δp|. Several runs are measured side by side in one
process, on the same shifted films.

Shifts (fixed beforehand, from the shortcut-robust issue): zoom in by cropping 3 % and 6 % of each
side; a crop of 5 % off one side; gamma 0.7 and 1.4; JPEG recompression at quality 30; a mild
Gaussian blur (σ = 0.4 % of the shorter side, about 1 px at 224 px); half resolution; a laterality
letter pasted into the top-right corner. And the shortcut audit's neutral-fill border mask, applied to
the film before the run's image path (:data:`BORDER_MASK`).
"""
from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from benchmarks._common import base_parser, finish, machine, table
from benchmarks.quality.results import path_roots, portable
from core.data.cues import neutral_film_border
from core.data.datasets import CLASS_NAMES, find_dataset
from core.data.decode import decode_image
from core.data.images import Preprocessing, preprocess_gray, read_image
from core.store.runs import Run

__all__ = ["SHIFTS", "BORDER_MASK", "crop", "gamma", "jpeg", "blur", "half_resolution", "paste_letter", "measure", "main"]


def crop(gray: np.ndarray, fraction: float, sides: str = "all") -> np.ndarray:
    """Cut ``fraction`` of the side off each edge (``all``: a zoom in) or off the left edge only (``left``)."""
    height, width = gray.shape
    dy, dx = int(round(fraction * height)), int(round(fraction * width))
    if sides == "left":
        return gray[:, dx:]
    return gray[dy:height - dy, dx:width - dx]


def gamma(gray: np.ndarray, value: float) -> np.ndarray:
    return np.clip(np.round(255.0 * (gray / 255.0) ** value), 0, 255).astype(np.uint8)


def jpeg(gray: np.ndarray, quality: int) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(gray).save(buffer, format="JPEG", quality=quality)
    return decode_image(buffer.getvalue(), "recompressed.jpeg")


def blur(gray: np.ndarray, fraction: float) -> np.ndarray:
    radius = max(0.5, fraction * min(gray.shape))
    return np.asarray(Image.fromarray(gray).filter(ImageFilter.GaussianBlur(radius)))


def half_resolution(gray: np.ndarray) -> np.ndarray:
    height, width = gray.shape
    return np.asarray(Image.fromarray(gray).resize((max(1, width // 2), max(1, height // 2)), Image.BILINEAR))


def paste_letter(gray: np.ndarray, letter: str = "L") -> np.ndarray:
    """A white laterality letter, 6 % of the shorter side high, in the top-right corner."""
    image = Image.fromarray(gray.copy())
    side = min(gray.shape)
    font = ImageFont.load_default(size=max(8, int(0.06 * side)))
    margin = int(0.03 * side)
    box = ImageDraw.Draw(image).textbbox((0, 0), letter, font=font)
    ImageDraw.Draw(image).text((gray.shape[1] - margin - (box[2] - box[0]), margin), letter, fill=255, font=font)
    return np.asarray(image)


SHIFTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "zoom in 3 %": lambda g: crop(g, 0.03),
    "zoom in 6 %": lambda g: crop(g, 0.06),
    "crop 5 % off the left": lambda g: crop(g, 0.05, "left"),
    "gamma 0.7": lambda g: gamma(g, 0.7),
    "gamma 1.4": lambda g: gamma(g, 1.4),
    "JPEG quality 30": lambda g: jpeg(g, 30),
    "blur σ 0.4 %": lambda g: blur(g, 0.004),
    "half resolution": half_resolution,
    "letter pasted": paste_letter,
}
# The shortcut audit's border mask (core.data.cues.neutral_film_border): the outer 10 % of each side of the film
# replaced by a blurred copy of it, before the run's image path, as the audit does.
BORDER_MASK = "border masked (neutral fill)"


def _model(run_dir: Path) -> tuple[Any, dict[str, Any]]:
    from core.model.classifier import load_model  # heavy: Keras

    run = Run(run_dir)
    config = run.config()
    return load_model(run.model_path), {"run": run.id, "threshold": run.threshold(), "image_size": config.data.image_size,
                                        "resize_mode": config.data.resize_mode,
                                        "preprocessing": Preprocessing.of(config.data)}


def _probabilities(model: Any, pixels: np.ndarray, batch: int = 32) -> np.ndarray:
    from core.evaluation.metrics import sigmoid  # heavy: scikit-learn

    x = np.repeat(pixels[..., None], 3, axis=-1).astype(np.float32)
    return sigmoid(np.concatenate([np.asarray(model.predict_on_batch(x[i:i + batch])).reshape(-1)
                                   for i in range(0, len(x), batch)]))


def measure(run_dirs: list[Path], films: list[tuple[str, int]], say: Callable[[str], None] = print) -> dict[str, Any]:
    """Every run on every film, unshifted and under every shift; per run and shift the flips and mean |Δp|."""
    models = [_model(path) for path in run_dirs]
    sizes = list(dict.fromkeys((meta["image_size"], meta["resize_mode"], meta["preprocessing"]) for _, meta in models))
    shifts = {**SHIFTS, BORDER_MASK: neutral_film_border}  # the audit's mask too, on the film before the image path
    pixels: dict[tuple, dict[str, list[np.ndarray]]] = {key: {"none": [], **{s: [] for s in shifts}} for key in sizes}
    started = time.perf_counter()
    for index, (path, _) in enumerate(films):
        gray = read_image(path)  # full resolution, once
        for name, shift in [("none", lambda g: g), *shifts.items()]:
            shifted = shift(gray)
            for size, mode, prep in sizes:  # the run's own image path, preprocessing included
                pixels[(size, mode, prep)][name].append(preprocess_gray(shifted, size, mode, prep).pixels)
        if (index + 1) % 100 == 0:
            say(f"  {index + 1} of {len(films)} films shifted ({time.perf_counter() - started:.0f} s)")
    labels = np.array([label for _, label in films])
    results = []
    for model, meta in models:
        stack = pixels[(meta["image_size"], meta["resize_mode"], meta["preprocessing"])]
        base = _probabilities(model, np.stack(stack["none"]))
        rows = {}
        for name in (*SHIFTS, BORDER_MASK):
            shifted = _probabilities(model, np.stack(stack[name]))
            flipped = (base >= meta["threshold"]) != (shifted >= meta["threshold"])
            rows[name] = {"flipped": int(flipped.sum()), "flip_rate": float(flipped.mean()),
                          "mean_abs_delta": float(np.abs(shifted - base).mean()),
                          "mean_delta": float((shifted - base).mean()),
                          "per_class": {cls: {"n": int((labels == k).sum()), "flipped": int(flipped[labels == k].sum())}
                                        for k, cls in enumerate(CLASS_NAMES)}}
        results.append({**meta, "preprocessing": meta["preprocessing"].to_dict(),
                        "baseline_called_pneumonia": int((base >= meta["threshold"]).sum()), "shifts": rows})
        say(f"  {meta['run']}: measured")
    return {"n_films": len(films), "seconds": round(time.perf_counter() - started, 1), "runs": results}


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (e.g. models/starter-efficientnet-lite0)")
    parser.add_argument("--films", type=int, default=None, help="the first N test films per class (default all; "
                                                                 "--quick 20)")
    args = parser.parse_args(argv)
    args.films = args.films or (20 if args.quick else None)
    from core.jobs.commands.startup import import_tensorflow_quietly  # heavy: TensorFlow, quietly

    import_tensorflow_quietly()
    index = find_dataset(args.data)
    films = [(r.path, r.label) for label in (0, 1)
             for r in [r for r in index.split("test") if r.label == label][:args.films]]
    result = portable({"benchmark": "stability", "data": str(args.data), "machine": machine(), "shifts": [*SHIFTS, BORDER_MASK],
                       **measure(args.runs, films)}, path_roots())  # no path of this machine in the results
    rows = [[run["run"], name, f"{s['flipped']}/{result['n_films']}", f"{100 * s['flip_rate']:.1f} %",
             s["per_class"]["NORMAL"]["flipped"], s["per_class"]["PNEUMONIA"]["flipped"], f"{s['mean_abs_delta']:.3f}",
             f"{s['mean_delta']:+.3f}"] for run in result["runs"] for name, s in run["shifts"].items()]
    finish(result, args.out, table(rows, ["run", "shift", "flipped", "rate", "NORMAL", "PNEUMONIA", "mean |Δp|",
                                          "mean Δp"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
