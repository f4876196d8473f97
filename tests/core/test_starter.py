"""A starter run shipped with the repository (models/starter-*, marked by starter.json) is listed but never deleted."""
from __future__ import annotations

import pytest

from core.config import preset
from core.runs import STARTER_MARKER, RunError, RunStore


def test_a_starter_run_is_listed_and_its_delete_is_refused(tmp_path):
    store = RunStore(tmp_path)
    starter, other = store.create(preset("Quick real-sample demo")), store.create(preset("Quick CPU demo"))
    starter.write_json(STARTER_MARKER, {"note": "shipped with the repository"})
    assert starter.starter == {"note": "shipped with the repository"} and other.starter is None
    with pytest.raises(RunError, match="starter model shipped with the repository"):
        store.delete(starter.id)
    (starter.path / STARTER_MARKER).write_text("{not json")  # a damaged marker still protects the run
    with pytest.raises(RunError, match="starter"):
        store.delete(starter.id)
    store.delete(other.id)
    assert [run.id for run in store.list()] == [starter.id]
