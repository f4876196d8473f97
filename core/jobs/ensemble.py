"""Building ensembles: create one over runs (or N seeds of a config), train its members, combine them, choose its threshold, evaluate once; the ``python -m core.ensemble`` command.

What an ensemble run is, and its model, are :mod:`core.evaluation.ensemble`. Members must share
the image size, the resize mode and the validation and test lists (the same ``splits.json`` rows):
otherwise one member's validation images would be another's training images. Grad-CAM of an
ensemble is the mean of its members' maps, each taken at its own backbone's Grad-CAM layer and
for the class the *ensemble* calls (Lakshminarayanan et al. 2017 for deep ensembles).
"""
from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from core.config import ConfigError, RunConfig
from core.data.pipeline import load_arrays, make_dataset
from core.data.preprocess import Preprocessing
from core.data.splits import MANIFEST_NAME, saved_splits
from core.evaluation.ensemble import ENSEMBLE_FILE, combine_models, is_ensemble, member_ids
from core.store.runs import Run, RunError, RunStore, StopRequested

__all__ = ["create_ensemble", "create_seed_ensemble", "build_ensemble"]

Progress = Callable[[str, float], None]  # (message, fraction of the ensemble done)


def create_ensemble(store: RunStore, members: Sequence[str], name: str | None = None) -> Run:
    """A new ensemble run over existing runs (finished, or still to be trained by the ensemble).

    The ensemble's ``config.json`` is its first member's config under the ensemble's name: it fixes
    the data source, image size and threshold rule the ensemble is evaluated with.

    Raises:
        RunError: fewer than two members, an unknown member, or members that cannot be averaged.
    """
    members = list(dict.fromkeys(members))
    if len(members) < 2:
        raise RunError("an ensemble needs at least two member runs")
    runs = [store.get(member) for member in members]  # RunError names an unknown id
    nested = [run.id for run in runs if is_ensemble(run)]
    if nested:
        raise RunError(f"members must be normal runs, not ensembles: {', '.join(nested)}")
    configs = [run.config() for run in runs]
    _check_compatible(runs, configs)
    config = RunConfig.from_dict(configs[0].to_dict())
    config.name = name or f"ensemble-{len(runs)}-{configs[0].model.backbone}"
    run = store.create(config)
    run.write_json(ENSEMBLE_FILE, {"members": [r.id for r in runs], "combine": "mean of logits"})
    return run


def create_seed_ensemble(store: RunStore, config: RunConfig, seeds: int = 3) -> Run:
    """``seeds`` member runs of one config (training seeds s, s+1, …; one shared validation split) and their ensemble.

    Nothing is trained here: training the ensemble run trains its members first, one after another.
    """
    if not 2 <= seeds <= 10:
        raise ConfigError(f"ensemble seeds: must be 2..10; got {seeds}")
    config.validate()
    members = []
    for offset in range(seeds):
        member = config.with_overrides(**{"name": f"{config.name}-seed{config.train.seed + offset}",
                                          "train.seed": config.train.seed + offset,
                                          "data.split_seed": config.split_seed})
        members.append(store.create(member.validate()).id)
    return create_ensemble(store, members, name=f"{config.name}-ensemble{seeds}")


def _check_compatible(runs: Sequence[Run], configs: Sequence[RunConfig]) -> None:
    first = configs[0].data
    for run, config in zip(runs[1:], configs[1:]):
        if (config.data.image_size, config.data.resize_mode) != (first.image_size, first.resize_mode):
            raise RunError(f"member {run.id} takes {config.data.image_size} px ({config.data.resize_mode}); "
                           f"{runs[0].id} takes {first.image_size} px ({first.resize_mode}): an ensemble's members "
                           "must see the same image")
        if Preprocessing.of(config.data) != Preprocessing.of(first):
            raise RunError(f"member {run.id} preprocesses its films otherwise "
                           f"({Preprocessing.of(config.data).describe()}) than {runs[0].id} "
                           f"({Preprocessing.of(first).describe()}): an ensemble's members must see the same image")
        if (config.data.source, config.data.path) != (first.source, first.path):
            raise RunError(f"member {run.id} was trained on other data ({config.data.source} {config.data.path or ''})")


def _split_rows(run: Run) -> dict[str, list[tuple[str, str]]]:
    """The validation and test files of a member's ``splits.json``, with their content hashes."""
    saved = saved_splits(run.path)
    if saved is None:
        raise RunError(f"member {run.id} has no {MANIFEST_NAME}: train it with this version first")
    return {name: sorted((r.path, saved.hashes.get(r.path, "")) for r in getattr(saved, name)) for name in ("val", "test")}


def _check_same_splits(runs: Sequence[Run]) -> None:
    reference = _split_rows(runs[0])
    for run in runs[1:]:
        rows = _split_rows(run)
        for split in ("val", "test"):
            if rows[split] != reference[split]:
                raise RunError(
                    f"members {runs[0].id} and {run.id} have different {split} lists: their validation splits were "
                    "drawn with different seeds. Train members with the same data.split_seed (the '3 seeds' "
                    "choice does this).")


# ----------------------------------------------------------------------------------------- building
def _train_members(run: Run, members: Sequence[Run], progress: Progress) -> None:
    """Train (or resume) every member that has not finished, one after another, each as its own trainer.

    A stop request on the ensemble is passed on to the member in training; a hard stop (SIGTERM to
    the ensemble's process group) reaches the member too, since it runs in the same group.
    """
    for index, member in enumerate(members, start=1):
        state = member.status().state
        if state == "finished":
            continue
        if run.stop_requested():
            raise StopRequested()
        progress(f"training member {index}/{len(members)}: {member.id}", 0.9 * (index - 1) / len(members))
        # In this process's group: a hard stop of the ensemble reaches the member too.
        trainer = member.spawn(resume=state != "created", own_session=False)
        while trainer.poll() is None:
            try:
                trainer.wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                if run.stop_requested() and not member.stop_requested():
                    member.request_stop()
        if run.stop_requested():
            raise StopRequested()
        final = member.status()
        if trainer.returncode != 0 or final.state != "finished":
            raise RunError(f"member {member.id} did not finish ({final.state}: {final.error or 'see its log'})")


def build_ensemble(run: Run, progress: Progress | None = None) -> dict[str, Any]:
    """Train missing members, combine them, choose the threshold on validation, evaluate once on test.

    Returns:
        The ensemble's metrics (also saved as its ``metrics.json``).
    """
    from core.evaluation.evaluate import choose_run_threshold, evaluate_run  # heavy: scikit-learn
    from core.model.classifier import load_model  # heavy: Keras

    report = progress or (lambda message, fraction: None)
    store = RunStore(run.path.parent)
    members = [store.get(member) for member in member_ids(run)]
    _train_members(run, members, report)
    _check_same_splits(members)
    (run.path / MANIFEST_NAME).write_bytes((members[0].path / MANIFEST_NAME).read_bytes())

    report("combining the members' models", 0.9)
    model = combine_models([load_model(member.model_path) for member in members])
    model.save(run.model_path)

    config = run.config()
    report("choosing the ensemble's threshold on validation", 0.92)
    val = saved_splits(run.path).val
    loaded = load_arrays(val, config.data.image_size, config.data.resize_mode, cache=config.data.cache,
                         preprocessing=Preprocessing.of(config.data))
    choose_run_threshold(run, model, make_dataset(*loaded, config.train.batch_size, training=False), loaded.labels,
                         [val[i].patient or val[i].path for i in loaded.kept],
                         f"validation ({len(loaded.kept)} images), ensemble of {len(members)}")
    report("evaluating once on the test split", 0.95)
    return evaluate_run(run)
