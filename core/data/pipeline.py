"""Pipeline: decoding a data set once into cached uint8 arrays (memory or disk) and the input pipeline over them (tf.data, or the feeder on another backend)."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from core.config import AugmentConfig
from core.data.datasets import ImageRecord
from core.data.decode import ImageLoadError
from core.data.images import model_pixels
from core.data.preprocess import NO_PREPROCESSING, Preprocessing

if TYPE_CHECKING:
    import tensorflow as tf

    from core.data.feeder import ArrayBatches
from core.config.backend import current_backend
from core.data.demo import default_cache_dir

__all__ = ["LoadedArrays", "load_arrays", "make_dataset", "weights_in_batches"]

log = logging.getLogger(__name__)


class LoadedArrays(tuple):
    """``(images, labels)`` from :func:`load_arrays`, with what was skipped.

    Unpacks like a 2-tuple. ``kept`` are the indices into the records that were loaded (images
    row i is ``records[kept[i]]``); ``skipped`` lists ``(path, reason)`` for records that failed.
    """

    images: np.ndarray
    labels: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]]

    def __new__(cls, images: np.ndarray, labels: np.ndarray, kept: np.ndarray,
                skipped: list[tuple[str, str]]) -> "LoadedArrays":
        obj = super().__new__(cls, (images, labels))
        obj.images, obj.labels, obj.kept, obj.skipped = images, labels, kept, skipped
        return obj


def _cache_key(records: Sequence[ImageRecord], image_size: int, resize_mode: str,
               preprocessing: Preprocessing = NO_PREPROCESSING) -> str:
    # Without preprocessing the key is the one it always was, so arrays cached before it existed are still found.
    settings = "" if not preprocessing.active else "|" + json.dumps(preprocessing.to_dict(), sort_keys=True)
    h = hashlib.sha256(f"v1|{image_size}|{resize_mode}{settings}|{len(records)}".encode())
    stats: dict[str, str] = {}
    for r in records:
        file = r.path.split("::", 1)[0]
        if file not in stats:
            try:
                st = os.stat(file)
                stats[file] = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stats[file] = "missing"
        h.update(f"\n{r.path}|{r.label}|{stats[file]}".encode())
    return h.hexdigest()[:24]


def _default_cache_dir() -> Path:
    return default_cache_dir()


def load_arrays(
    records: Sequence[ImageRecord],
    image_size: int,
    resize_mode: str = "stretch",
    cache: str = "memory",
    cache_dir: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    *,
    preprocessing: Preprocessing | None = None,
) -> LoadedArrays:
    """Decode every image once into uint8 (N, S, S, 1) plus float32 labels (N,).

    Each image goes through :func:`core.data.images.model_pixels`, the same path as a single image on
    the Explain and Demo pages. Decoding runs in a thread pool (PIL releases the GIL). A record that fails to decode is
    skipped with a logged warning and listed in the result's ``skipped``; ``kept`` maps rows
    back to records. With ``cache="disk"`` the arrays are stored as ``.npy`` under
    ``<cache_dir>/arrays/`` keyed by (paths, labels, file sizes and mtimes, size, resize mode, preprocessing),
    so a later call (also from another process) memory-maps them without decoding.

    Args:
        records: the images to load.
        image_size: output side in pixels.
        resize_mode: one of :data:`core.config.RESIZE_MODES`.
        cache: "memory" / "none" (decode into memory) or "disk".
        cache_dir: cache root; default ``$CXR_STUDIO_CACHE`` or ``~/.cache/cxr-studio``.
        progress: called as ``progress(done, total)``.
        preprocessing: the run's ``Preprocessing.of(config.data)``; default none.

    Returns:
        :class:`LoadedArrays`, which unpacks as ``images, labels``.
    """
    records = list(records)
    total = len(records)
    preprocessing = preprocessing or NO_PREPROCESSING
    files = None
    if cache == "disk":
        folder = Path(cache_dir).expanduser() if cache_dir is not None else _default_cache_dir()
        folder = folder / "arrays"
        key = _cache_key(records, image_size, resize_mode, preprocessing)
        files = {name: folder / f"{key}.{name}.npy" for name in ("images", "labels", "kept")}
        meta = folder / f"{key}.json"
        if meta.is_file() and all(p.is_file() for p in files.values()):
            try:
                skipped = [tuple(x) for x in json.loads(meta.read_text())["skipped"]]
                images = np.load(files["images"], mmap_mode="r", allow_pickle=False)
                labels = np.load(files["labels"], allow_pickle=False)
                kept = np.load(files["kept"], allow_pickle=False)
                if progress:
                    progress(total, total)
                return LoadedArrays(images, labels, kept, skipped)
            except (OSError, ValueError, KeyError):
                log.warning("array cache %s is unreadable; decoding again", key)

    images = np.zeros((total, image_size, image_size, 1), dtype=np.uint8)
    ok = np.zeros(total, dtype=bool)
    skipped: list[tuple[str, str]] = []
    opened: dict = {}

    def work(i: int) -> tuple[int, str | None]:
        try:  # the single-image path itself, so a film has the same pixels alone and in a batch
            images[i, ..., 0] = model_pixels(records[i].path, image_size, resize_mode,
                                                preprocessing=preprocessing, opened=opened)
            return i, None
        except ImageLoadError as exc:
            return i, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for done, (i, error) in enumerate(pool.map(work, range(total)), start=1):
            if error is None:
                ok[i] = True
            else:
                skipped.append((records[i].path, error))
                log.warning("skipped %s: %s", records[i].path, error)
            if progress and (done == total or done % 16 == 0):
                progress(done, total)
    kept = np.flatnonzero(ok)
    if len(kept) < total:
        images = images[kept]
    labels = np.array([records[i].label for i in kept], dtype=np.float32)

    if files is not None:
        folder.mkdir(parents=True, exist_ok=True)
        for name, array in (("images", images), ("labels", labels), ("kept", kept)):
            with tempfile.NamedTemporaryFile(dir=folder, suffix=".tmp", delete=False) as fh:
                np.save(fh, array, allow_pickle=False)
            os.replace(fh.name, files[name])
        with tempfile.NamedTemporaryFile("w", dir=folder, suffix=".tmp", delete=False) as fh:
            json.dump({"skipped": skipped, "count": total, "image_size": image_size,
                       "resize_mode": resize_mode, **preprocessing.to_dict()}, fh)
        os.replace(fh.name, meta)  # written last: its presence means the arrays are complete
    return LoadedArrays(images, labels, kept, skipped)


def weights_in_batches() -> bool:
    """True when class weights travel in the batches (the feeder, on JAX), False when ``fit`` applies them (tf.data)."""
    return current_backend() != "tensorflow"


def make_dataset(
    images: np.ndarray,
    labels: np.ndarray,
    batch_size: int,
    *,
    training: bool,
    augment: AugmentConfig | None = None,
    seed: int = 0,
    class_weight: dict[int, float] | None = None,
    multiple_of: int = 1,
) -> "tf.data.Dataset | ArrayBatches":
    """Batches over uint8 (N, S, S, 1) images: a tf.data pipeline on TensorFlow, the feeder on any other backend.

    Training: shuffle (seeded, reshuffled every epoch) → batch → augment (if active) → 3
    channels → prefetch. Not training: fixed order, no augmentation. Shuffling and batching
    work on indices, so images are gathered once per batch rather than copied into a shuffle
    buffer. On another backend the same arrays go through :class:`core.data.feeder.ArrayBatches`
    (the same batches when not training; the same layers when training), which also carries
    ``class_weight`` and pads batches to ``multiple_of`` rows (data-parallel devices); on
    TensorFlow ``fit`` applies the class weights (:func:`weights_in_batches`).

    Yields:
        ``(float32 (B, S, S, 3) in 0..255, float32 (B,))``, and the weights ``(B,)`` from the feeder.
    """
    if current_backend() != "tensorflow":
        from core.data.feeder import ArrayBatches  # heavy: Keras

        return ArrayBatches(images, labels, batch_size, training=training, augment=augment, seed=seed,
                            class_weight=class_weight, multiple_of=multiple_of)
    import tensorflow as tf  # heavy: TensorFlow

    from core.data.augment import augmentation_layers  # heavy: Keras

    images_t = tf.convert_to_tensor(np.asarray(images))
    if images_t.shape.rank == 3:
        images_t = images_t[..., None]
    labels_t = tf.convert_to_tensor(np.asarray(labels, dtype=np.float32))
    n = int(images_t.shape[0])
    layers = augmentation_layers(augment, seed) if (training and augment is not None) else None

    def to_batch(idx):
        x = tf.cast(tf.gather(images_t, idx), tf.float32)
        if layers is not None:
            x = layers(x, training=True)
        if x.shape[-1] == 1:
            x = tf.repeat(x, 3, axis=-1)
        return x, tf.gather(labels_t, idx)

    ds = tf.data.Dataset.range(n)
    if training:
        ds = ds.shuffle(max(1, n), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size).map(to_batch, num_parallel_calls=tf.data.AUTOTUNE,
                                  deterministic=not training or None)
    return ds.prefetch(tf.data.AUTOTUNE)
