"""Training on Keras's JAX backend: a killed run resumes, no TensorFlow is imported, the model opens on TensorFlow, the refusals."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass

import numpy as np
import pytest

from core.config import ConfigError, TrainConfig, preset
from core.config.paths import REPO_ROOT
from core.store.runs import Run, RunStore
from core.training.callbacks import CRASH_ENV, committed_epoch

SIZE = 32

# Runs `python -m core.train` with every import of TensorFlow (or of what needs it) refused and written down at
# once, so a SIGKILLed process leaves its attempts too; a process that ends writes the modules it had loaded.
NO_TENSORFLOW = textwrap.dedent('''
    """python -m core.train with TensorFlow unimportable; attempts and loaded modules go to $CXR_TEST_IMPORTS."""
    import atexit, json, os, runpy, sys, traceback

    BLOCKED = ("tensorflow", "tf_keras", "tensorboard")

    def note(row):
        with open(os.environ["CXR_TEST_IMPORTS"], "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), **row}) + "\\n")

    class NoTensorFlow:
        def find_spec(self, name, path=None, target=None):
            if name.startswith(BLOCKED):
                stack = [line for line in traceback.format_stack() if "<frozen" not in line]
                note({"attempt": name, "stack": stack[-8:-1]})
                raise ImportError(f"{name} is blocked: the JAX training path must not import it")
            return None

    def at_exit():
        keras = sys.modules.get("keras")
        note({"exit": True, "loaded": sorted(m for m in sys.modules if m.startswith(BLOCKED)),
              "keras_backend": keras.backend.backend() if keras else None, "jax": "jax" in sys.modules})

    sys.meta_path.insert(0, NoTensorFlow())
    sys.path.insert(0, os.getcwd())
    atexit.register(at_exit)
    sys.argv = ["core.train", *sys.argv[1:]]
    runpy.run_module("core.train", run_name="__main__", alter_sys=True)
''')


def clean_env(**more: str) -> dict[str, str]:
    """This process's environment without a backend, device split or crash point of its own, plus ``more``."""
    env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND", "XLA_FLAGS", CRASH_ENV)}
    return {**env, "PYTHONUNBUFFERED": "1", **more}


def train(args: list[str], env: dict[str, str], command: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*(command or [sys.executable, "-m", "core.train"]), *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


@dataclass
class JaxRun:
    """A run trained under JAX in three processes: killed twice by the crash hook, then resumed to the end."""

    run: Run
    starts: list[subprocess.CompletedProcess]
    imports: list[dict]  # what the import blocker wrote down, in all three processes
    after_kills: list[dict]  # after each kill: when, the epoch rows' times and each phase's committed epoch


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory, cache_dir) -> JaxRun:
    folder = tmp_path_factory.mktemp("jax")
    blocker, record, store = folder / "no_tensorflow.py", folder / "imports.jsonl", folder / "runs"
    blocker.write_text(NO_TENSORFLOW)
    config = preset("Quick CPU demo").with_overrides(**{  # left on TensorFlow: --backend jax chooses
        "name": "jax-resume", "data.image_size": SIZE, "data.demo_images_per_class": 40,
        "augment.jpeg_quality_min": 50,  # fine-tuning augments through Pillow's JPEG as well as Keras's layers
        "train.head.epochs": 2, "train.head.augment": False, "train.head.learning_rate": 1e-2,
        "train.finetune.epochs": 2, "train.batch_size": 8, "train.early_stopping_patience": 0,
        "train.progress_every_steps": 1, "train.seed": 3}).validate()
    config_file = folder / "config.json"
    config_file.write_text(config.to_json())
    command = [sys.executable, str(blocker)]
    imports = {"CXR_TEST_IMPORTS": str(record)}
    starts, after_kills = [], []

    def killed() -> None:
        after_kills.append({"at": time.time(), "times": {row["epoch"]: row["time"] for row in run.history("epoch")},
                            "committed": {phase: committed_epoch(run.path / "backup" / phase)
                                          for phase in ("head", "finetune")}})

    # 1: the head (cached frozen outputs) dies at epoch 2's end: its checkpoint may be written, epoch 1 committed.
    starts.append(train(["--config", str(config_file), "--store", str(store), "--backend", "jax"],
                        clean_env(**imports, **{CRASH_ENV: "epoch-end:2"}), command))
    (run,) = RunStore(store).list()
    killed()
    # 2: resumed; dies once fine-tuning (images, augmented) has committed epoch 3.
    starts.append(train(["--run-dir", str(run.path), "--resume"],
                        clean_env(**imports, **{CRASH_ENV: "backup-committed:3"}), command))
    killed()
    # 3: resumed to the end; $KERAS_BACKEND says tensorflow, and the run folder's own backend wins.
    starts.append(train(["--run-dir", str(run.path), "--resume"], clean_env(**imports, KERAS_BACKEND="tensorflow"),
                        command))
    rows = [json.loads(line) for line in record.read_text().splitlines()] if record.exists() else []
    return JaxRun(run, starts, rows, after_kills)


def test_a_killed_jax_run_resumes_with_every_epoch_once(jax_run):
    run, starts = jax_run.run, jax_run.starts
    assert [start.returncode for start in starts] == [-9, -9, 0], starts[-1].stderr[-3000:]
    status = run.status()
    assert status.state == "finished", run.log_tail()
    assert run.config().train.backend == "jax"
    assert json.loads((run.path / "config.json").read_text())["train"]["backend"] == "jax"
    plan = run.read_json("plan.json")
    assert plan["backend"] == "jax" and plan["strategy"] == "cpu" and plan["replicas"] == 1
    assert status.device["backend"] == "jax" and status.device["reason"].startswith("Keras on jax")
    rows = run.history("epoch")  # the raw rows: an epoch trained twice would appear twice
    assert [(row["epoch"], row["phase"]) for row in rows] == [(1, "head"), (2, "head"), (3, "finetune"),
                                                              (4, "finetune")]
    # The optimizer carried on from each backup: 48 training images (40 a class, less validation) in batches of 8.
    assert "train 48, val 8, test 16 images" in run.log_path.read_text()
    assert [row["iterations"] for row in rows] == [6, 12, 6, 12]
    first, second = jax_run.after_kills
    # Killed at epoch 2's end in the head: its row never written, only epoch 1 committed.
    assert first["committed"] == {"head": 1, "finetune": None} and sorted(first["times"]) == [1]
    # Killed once fine-tuning had committed epoch 3: epoch 1 kept, epoch 2 trained again, epoch 3 committed.
    assert second["committed"] == {"head": 2, "finetune": 3} and sorted(second["times"]) == [1, 2, 3]
    assert second["times"][1] == first["times"][1] and second["times"][2] > first["at"]
    assert {row["epoch"]: row["time"] for row in rows[:3]} == second["times"], "no committed epoch was trained again"
    assert rows[3]["time"] > second["at"]
    phases = run.history("phase")
    assert [(p["phase"], p["resumed_after"]) for p in phases] == [("head", 0), ("head", 1), ("finetune", 2),
                                                                  ("finetune", 3)]
    metrics = run.metrics()
    for key in ("sensitivity", "specificity", "roc_auc"):
        assert 0 <= metrics[key] <= 1, key
    assert metrics["n"] == len(metrics["predictions"]) == 16
    assert run.model_path.is_file() and not (run.path / "backup").exists()
    assert json.loads(starts[-1].stdout.strip().splitlines()[-1])["state"] == "finished"


def test_the_jax_training_path_never_imports_tensorflow(jax_run):
    """All three processes ran under an import blocker (TensorFlow, tf-keras, TensorBoard): none tried, and the one
    that ended had none of them loaded, with Keras on JAX."""
    attempts = [row for row in jax_run.imports if "attempt" in row]
    assert not attempts, json.dumps(attempts[:2], indent=1)
    exits = [row for row in jax_run.imports if row.get("exit")]
    assert len(exits) == 1, "the two killed processes write nothing at exit"
    assert exits[0] == {"pid": exits[0]["pid"], "exit": True, "loaded": [], "keras_backend": "jax", "jax": True}
    assert jax_run.run.status().state == "finished"


def test_a_jax_trained_model_opens_on_tensorflow_with_the_same_probabilities_and_a_heatmap(jax_run):
    """This process runs Keras on TensorFlow, as the dashboard does: the Explain and Demo pages' one image path
    (load_image → the model) reproduces the probabilities the JAX process wrote into metrics.json, and Grad-CAM
    explains the same model."""
    import keras

    from core.data.images import load_image
    from core.data.sample import local_path
    from core.evaluation.evaluate import predict_probabilities
    from core.evaluation.explain import Explainer
    from core.model.classifier import load_model

    assert keras.backend.backend() == "tensorflow"
    run = jax_run.run
    config, predictions = run.config(), run.metrics()["predictions"]
    model = load_model(run.model_path)
    images = np.stack([load_image(local_path(p["file"]), SIZE, config.data.resize_mode) for p in predictions])
    stored = np.array([p["probability"] for p in predictions])
    one_by_one = np.array([predict_probabilities(model, image)[0] for image in images])
    assert np.abs(one_by_one - stored).max() < 1e-5
    assert stored.std() > 1e-4, "the model tells films apart"

    explainer = Explainer(model, threshold=run.threshold())
    for image, probability in zip(images[:3], stored):
        explanation = explainer.explain(image)
        assert explanation.probability == pytest.approx(probability, abs=1e-5)
        cam = explanation.cam
        assert cam.shape == (SIZE, SIZE) and np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1
        assert cam.max() == pytest.approx(1, abs=1e-3) and cam.min() < 0.5, "a map, not a constant"
        assert explanation.explained == ("pneumonia" if probability >= run.threshold() else "normal")


# ------------------------------------------------------------------------------------------------ refusals
def _one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.mark.parametrize("args, env", [(["--backend", "torch"], {}), ([], {"KERAS_BACKEND": "torch"})],
                         ids=["--backend", "KERAS_BACKEND"])
def test_an_unsupported_backend_is_refused_in_one_line(tmp_path, args, env):
    result = train(["--preset", "Quick CPU demo", "--store", str(tmp_path), *args], clean_env(**env))
    assert result.returncode == 2
    assert _one_line(result.stderr) == ("error: Keras backend 'torch' is not supported: choose one of "
                                        "tensorflow, jax")
    assert not any(tmp_path.iterdir()), "no run was created"


def test_multiworker_under_jax_is_a_config_error_naming_train_device():
    with pytest.raises(ConfigError) as caught:
        TrainConfig(backend="jax", device="multiworker").validate()
    assert str(caught.value).startswith("train.device: multiworker") and "needs the TensorFlow backend, not jax" \
        in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match=r"^train\.backend: Keras backend 'torch' is not supported"):
        TrainConfig(backend="torch").validate()
    TrainConfig(backend="jax", device="mirrored").validate()


def test_export_and_grad_cam_refuse_at_import_under_jax_in_one_line():
    script = textwrap.dedent('''
        import importlib, json, sys
        from core.config.backend import BackendError
        out = {}
        for name in ("core.model.export", "core.evaluation.explain"):
            try:
                importlib.import_module(name)
                out[name] = None
            except BackendError as exc:
                out[name] = str(exc)
        out["tensorflow"] = sorted(m for m in sys.modules if m.startswith("tensorflow"))
        print(json.dumps(out))
    ''')
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=clean_env(KERAS_BACKEND="jax"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["core.model.export"].startswith("SavedModel and TFLite export")
    assert out["core.evaluation.explain"].startswith("Grad-CAM, Grad-CAM++ and Score-CAM")
    for name in ("core.model.export", "core.evaluation.explain"):
        message = out[name]
        assert "\n" not in message and "needs the TensorFlow backend" in message and "runs Keras on jax" in message
        assert "KERAS_BACKEND=tensorflow" in message, "it says what to do"
    assert out["tensorflow"] == [], "the refusal comes before any TensorFlow import"


@pytest.mark.parametrize("recorded, asked", [("jax", "tensorflow"), ("tensorflow", "jax")])
def test_a_run_folder_refuses_another_backend_than_its_own(tmp_path, recorded, asked):
    store = RunStore(tmp_path)
    run = store.create(preset("Quick CPU demo").with_overrides(**{"train.backend": recorded}))
    config_before = (run.path / "config.json").read_bytes()
    for args in (["--run-dir", str(run.path)], ["--store", str(tmp_path), "--resume", run.id]):
        result = train([*args, "--backend", asked], clean_env())
        assert result.returncode == 2, result.stderr[-2000:]
        assert _one_line(result.stderr) == (f"error: run {run.id} was created to train on {recorded}; it trains and "
                                            f"resumes on {recorded}, not {asked}")
    assert run.raw_status().state == "created" and (run.path / "config.json").read_bytes() == config_before
    assert not (run.path / "plan.json").exists()


# ------------------------------------------------------------------------------------------------ augmentation
def test_jpeg_quality_augmentation_runs_through_pillow_under_jax():
    """The feeder under JAX re-encodes through Pillow (eagerly, even when asked to compile the augmentation): at
    quality 100 exactly Pillow's round trip of each image, at 10..100 visibly changed pixels."""
    script = textwrap.dedent('''
        import io, json, sys
        import numpy as np
        from PIL import Image
        from core.config import AugmentConfig
        from core.data.feeder import ArrayBatches

        rng = np.random.default_rng(0)
        ramp = np.linspace(0, 200, 32)[None, :, None] + np.linspace(0, 40, 32)[None, None, :]
        images = np.clip(ramp + rng.normal(0, 12, (6, 32, 32)), 0, 255).astype(np.uint8)[..., None]
        labels = np.zeros(6, np.float32)
        off = dict(rotation_degrees=0, zoom=0, shift=0, brightness=0, contrast=0)

        def batch(quality):
            fed = ArrayBatches(images, labels, 6, training=True, augment=AugmentConfig(**off, jpeg_quality_min=quality),
                               seed=1, compile_augmentation=True)
            return fed, fed.indices(0), np.asarray(fed[0][0])

        def pillow(image, quality):
            buffer = io.BytesIO()
            Image.fromarray(image[..., 0]).save(buffer, "JPEG", quality=quality)
            return np.asarray(Image.open(buffer)).astype(np.float32)

        fed, order, best = batch(100)
        expected = np.stack([np.repeat(pillow(images[i], 100)[..., None], 3, axis=-1) for i in order])
        _, order10, low = batch(10)
        plain = images[order10, ..., 0].astype(np.float32)
        print(json.dumps({
            "backend": __import__("keras").backend.backend(), "compiled": fed._compiled is not None,
            "shape": list(low.shape), "dtype": str(low.dtype),
            "equal_to_pillow_100": bool(np.array_equal(best, expected)),
            "changed_at_100": float(np.abs(best[..., 0] - images[order, ..., 0]).max()),
            "channels_equal": bool((low == low[..., :1]).all()), "range": [float(low.min()), float(low.max())],
            "mean_change_10": float(np.abs(low[..., 0] - plain).mean()),
            "tensorflow": sorted(m for m in sys.modules if m.startswith("tensorflow"))}))
    ''')
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=clean_env(KERAS_BACKEND="jax"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["backend"] == "jax" and out["tensorflow"] == []
    assert not out["compiled"], "Pillow's encoder cannot run inside jax.jit: the JPEG stack stays eager"
    assert out["shape"] == [6, SIZE, SIZE, 3] and out["dtype"] == "float32" and out["channels_equal"]
    assert out["equal_to_pillow_100"] and out["changed_at_100"] > 0
    assert 0 <= out["range"][0] and out["range"][1] <= 255 and out["mean_change_10"] > 1.0
