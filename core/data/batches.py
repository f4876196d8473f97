"""Reading batches the same way from either input pipeline: a tf.data pipeline, or the feeder (an indexed ``keras.utils.PyDataset``) with its padding rows."""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = ["batches_of", "real_rows"]


def batches_of(data: Any) -> Iterator[tuple]:
    """The batches of a tf.data pipeline or a feeder, once through, in order (a feeder's epoch does not advance).

    A feeder is indexed (``len`` and ``[i]``, as every ``keras.utils.PyDataset``); a tf.data pipeline is iterated.
    """
    if hasattr(data, "__getitem__") and hasattr(data, "__len__") and hasattr(data, "on_epoch_end"):
        return (data[i] for i in range(len(data)))
    return iter(data)


def real_rows(batch: tuple) -> tuple[np.ndarray | None, np.ndarray]:
    """``(mask of the rows that are not padding, or None when all are real; labels)`` of one batch.

    The feeder's batches are ``(x, y, w)`` with ``w == 0`` exactly on the rows that pad a batch to a
    multiple of the data-parallel device count; a tf.data batch ``(x, y)`` has none.
    """
    labels = np.asarray(batch[1]).reshape(-1)
    if len(batch) > 2:
        return np.asarray(batch[2]).reshape(-1) > 0, labels
    return None, labels
