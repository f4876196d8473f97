"""Ensembles as runs: members are normal runs; the ensemble averages their logits, picks its own threshold and is evaluated once.

An ensemble run folder holds ``ensemble.json`` (the member run ids) beside the usual files. Its
``model.keras`` is one Keras model that feeds the image to every member and averages their logits,
so evaluation, the prediction CLI, Explain and Demo use it like any other run's model (one image
path, one model file), and it keeps working if a member run is deleted later. Members must share
the image size, the resize mode and the validation and test lists (the same ``splits.json`` rows):
otherwise one member's validation images would be another's training images. Grad-CAM of an
ensemble is the mean of its members' maps, each taken at its own backbone's Grad-CAM layer and
for the class the *ensemble* calls (Lakshminarayanan et al. 2017 for deep ensembles).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.config import ConfigError, RunConfig, preset
from core.runs import Run, RunError, RunStore

__all__ = [
    "ENSEMBLE_FILE",
    "is_ensemble",
    "member_ids",
    "create_ensemble",
    "create_seed_ensemble",
    "build_ensemble",
    "combine_models",
    "member_models",
    "EnsembleExplainer",
    "main",
]

ENSEMBLE_FILE = "ensemble.json"
MEMBER_PREFIX = "member_"
Progress = Callable[[str, float], None]  # (message, fraction of the ensemble done)


def is_ensemble(run: Run) -> bool:
    """True for a run folder that is an ensemble of other runs."""
    return (run.path / ENSEMBLE_FILE).is_file()


def member_ids(run: Run) -> list[str]:
    """The member run ids of an ensemble run."""
    raw = run.read_json(ENSEMBLE_FILE) or {}
    return list(raw.get("members", []))


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
        if (config.data.source, config.data.path) != (first.source, first.path):
            raise RunError(f"member {run.id} was trained on other data ({config.data.source} {config.data.path or ''})")


def _split_rows(run: Run) -> dict[str, list[tuple[str, str]]]:
    """The validation and test files of a member's ``splits.json``, with their content hashes."""
    from core.splits import MANIFEST_NAME, saved_splits

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


# ----------------------------------------------------------------------------------------- the model
def combine_models(models: Sequence[Any]) -> Any:
    """One Keras model: the image into every member, the mean of their float32 logits out."""
    import keras

    shape = tuple(models[0].input_shape[1:])
    image = keras.Input(shape, name="image")
    logits = []
    for index, model in enumerate(models):
        if tuple(model.input_shape[1:]) != shape:
            raise RunError(f"member {index + 1} takes {model.input_shape[1:]}, member 1 takes {shape}")
        model.name = f"{MEMBER_PREFIX}{index}_{model.name}"
        logits.append(keras.ops.cast(model(image), "float32"))
    mean = keras.layers.Average(name="logit", dtype="float32")(logits)
    return keras.Model(image, mean, name=f"ensemble_of_{len(models)}")


def member_models(model: Any) -> list[Any]:
    """The member classifiers inside an ensemble model, or [] for a single classifier."""
    import keras

    return [layer for layer in model.layers if isinstance(layer, keras.Model) and layer.name.startswith(MEMBER_PREFIX)]


class EnsembleExplainer:
    """Probability and heatmap of an ensemble: the mean of its members' maps for the class the ensemble calls."""

    def __init__(self, model: Any, threshold: float = 0.5):
        from core.explain import Explainer

        self.model = model
        self.threshold = float(threshold)
        self.members = [Explainer(member, threshold=threshold) for member in member_models(model)]
        if not self.members:
            raise ValueError("not an ensemble model")
        self.layer = f"mean over {len(self.members)} members ({', '.join(sorted({m.layer for m in self.members}))})"

    def explain(self, image: np.ndarray, method: str = "gradcam", target: str = "predicted"):
        from core.explain import Explanation, _batch, _explained_classes, _logits, _sigmoid

        x, _ = _batch(image)
        logit = _logits(self.model, x[:1])
        pneumonia = bool(_explained_classes(logit, target, self.threshold)[0])
        member_target = "pneumonia" if pneumonia else "normal"
        maps = np.stack([member.explain(x[0], method, member_target).cam for member in self.members])
        cam = maps.mean(axis=0)
        cam = (cam - cam.min()) / (cam.max() - cam.min() + 1e-7)
        return Explanation(float(_sigmoid(logit[0])), cam.astype(np.float32), method, self.layer, member_target)


# ----------------------------------------------------------------------------------------- building
def _train_members(run: Run, members: Sequence[Run], progress: Progress) -> None:
    """Train (or resume) every member that has not finished, one after another, each as its own trainer.

    A stop request on the ensemble is passed on to the member in training; a hard stop (SIGTERM to
    the ensemble's process group) reaches the member too, since it runs in the same group.
    """
    from core.runs import StopRequested

    for index, member in enumerate(members, start=1):
        state = member.status().state
        if state == "finished":
            continue
        if run.stop_requested():
            raise StopRequested()
        progress(f"training member {index}/{len(members)}: {member.id}", 0.9 * (index - 1) / len(members))
        args = [sys.executable, "-m", "core.train", "--run-dir", str(member.path)]
        if state != "created":
            args.append("--resume")
        with open(member.log_path, "a") as log:
            trainer = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
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
    from core.evaluate import choose_run_threshold, evaluate_run
    from core.model import load_model
    from core.pipeline import load_arrays, make_dataset
    from core.splits import MANIFEST_NAME, saved_splits

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
    loaded = load_arrays(val, config.data.image_size, config.data.resize_mode, cache=config.data.cache)
    choose_run_threshold(run, model, make_dataset(*loaded, config.train.batch_size, training=False), loaded.labels,
                         [val[i].patient or val[i].path for i in loaded.kept],
                         f"validation ({len(loaded.kept)} images), ensemble of {len(members)}")
    report("evaluating once on the test split", 0.95)
    return evaluate_run(run)


# ----------------------------------------------------------------------------------------- CLI
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core.ensemble", description=__doc__.splitlines()[0])
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--members", nargs="+", metavar="RUN_ID", help="ensemble these existing runs")
    what.add_argument("--seeds", type=int, metavar="N", help="train N seeds of one config, then ensemble them")
    p.add_argument("--config", help="run config JSON for --seeds")
    p.add_argument("--preset", help="named preset for --seeds")
    p.add_argument("--name")
    p.add_argument("--store", help="run store folder (default models/ or $CXR_STUDIO_RUNS)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Create an ensemble run and train it (its members first) in this process; prints its metrics as JSON."""
    args = _parser().parse_args(argv)
    from core.startup import import_tensorflow_quietly

    import_tensorflow_quietly()
    from core.train import run_and_record

    store = RunStore(args.store)
    try:
        if args.members:
            run = create_ensemble(store, args.members, args.name)
        else:
            config = RunConfig.load(args.config) if args.config else preset(args.preset) if args.preset else RunConfig()
            if args.name:
                config.name = args.name
            run = create_seed_ensemble(store, config, args.seeds)
    except (ConfigError, RunError, OSError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"ensemble run {run.id} in {run.path.parent} (members: {', '.join(member_ids(run))})", file=sys.stderr)
    code = run_and_record(run, resume=False)
    metrics = run.metrics() or {}
    print(json.dumps({"run": run.id, "state": run.status().state, "error": run.status().error,
                      "metrics": {k: metrics.get(k) for k in ("sensitivity", "specificity", "roc_auc")}}))
    return code


if __name__ == "__main__":
    sys.exit(main())
