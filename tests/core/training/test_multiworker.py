"""Multi-worker training (MultiWorkerMirroredStrategy, TF_CONFIG): two local CPU workers train one run like one process.

The fast tests need no second process: TF_CONFIG parsing, the bounded join (a worker that never
comes is named within the timeout), the lost-worker message and the CLI's refusals. The slow ones
start real workers on 127.0.0.1: one run end to end against a single process with the same global
batch and seed, and a stop request, a killed worker and two resumes of one run.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from run_helpers import wait_for

import core.training.cluster
from core.training.cluster import ClusterError, ClusterTask, connect_cluster
from core.config import preset
from core.store.runs import RunStore
from core.jobs.run import readable_error, run_and_record
from core.jobs.commands.train import local_tf_configs, main, start_local_workers

REPO = Path(__file__).resolve().parents[3]
# What a finished run folder holds, whoever trained it; backup/ and checkpoints/ are gone once it finishes.
RUN_FILES = {"config.json", "status.json", "history.jsonl", "model.keras", "threshold.json", "metrics.json",
             "splits.json", "plan.json", "log.txt", "tensorboard"}
# Measured on this 2-core CPU (docs/scaling.md): without BatchNorm in training mode, dropout or augmentation,
# two workers reproduce one process to float32 rounding (largest val-loss difference seen 1.6e-5, same test AUC).
VAL_LOSS_TOLERANCE = 1e-4
AUC_TOLERANCE = 1e-3
PROBABILITY_TOLERANCE = 1e-3


def _free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


def _tf_config(ports: list[int], index: int, chief: bool = False) -> str:
    addresses = [f"127.0.0.1:{port}" for port in ports]
    cluster = {"chief": addresses[:1], "worker": addresses[1:]} if chief else {"worker": addresses}
    task = {"type": "chief", "index": 0} if chief and index == 0 else {"type": "worker", "index": index - chief}
    return json.dumps({"cluster": cluster, "task": task})


# --------------------------------------------------------------------------- fast


def test_tf_config_names_the_chief_and_every_worker():
    ports = _free_ports(3)
    first = ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, 0)})
    assert first.is_chief and first.workers == 3 and first.connect_timeout == 60
    assert first.address == f"worker 0 (127.0.0.1:{ports[0]}) (chief)"
    second = ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, 2), "CXR_STUDIO_CONNECT_TIMEOUT": "7"})
    assert not second.is_chief and second.connect_timeout == 7 and second.own_address == f"127.0.0.1:{ports[2]}"
    with_chief = ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, 1, chief=True)}, connect_timeout=3)
    assert not with_chief.is_chief and with_chief.address == f"worker 0 (127.0.0.1:{ports[1]})"
    assert ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, 0, chief=True)}).is_chief
    assert ClusterTask.from_env({}) is None and ClusterTask.from_env({"TF_CONFIG": '{"cluster": {}}'}) is None
    with pytest.raises(ClusterError, match="not valid JSON"):
        ClusterTask.from_env({"TF_CONFIG": "{worker: 1"})
    with pytest.raises(ClusterError, match="'worker' 5 is not in its cluster"):
        ClusterTask.from_env({"TF_CONFIG": json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 5}})})


def test_a_worker_that_never_comes_is_named_within_the_timeout(monkeypatch):
    """TensorFlow would wait for it forever (holding the interpreter lock); the rendezvous gives up and names it."""

    class Clock:
        """The rendezvous' clock: time passes only in its sleeps, so the deadline is checked whatever this machine's speed."""
        now, sleeps = 0.0, 0

        def monotonic(self) -> float:
            return self.now

        def sleep(self, seconds: float) -> None:
            self.sleeps += 1
            if self.sleeps > 1000:  # only a safety net: a rendezvous that never gives up fails here instead of hanging
                pytest.fail(f"the rendezvous still waits after {self.now:.0f} s of a 1 s connect timeout")
            self.now += seconds

    clock = Clock()
    monkeypatch.setattr(core.training.cluster, "time", clock)
    ports = _free_ports(2)
    cluster = ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, 0)}, connect_timeout=1.0)
    with pytest.raises(ClusterError) as failure:
        connect_cluster(cluster, factory=lambda: pytest.fail("the strategy must not be made"), poll=0.1)
    assert 1.0 <= clock.now < 1.0 + 0.1 + 1e-9, "it gives up at the timeout: not before, and not a poll later"
    message = str(failure.value)
    assert f"worker 1 (127.0.0.1:{ports[1]}): connection refused" in message and "within 1 s" in message
    with socket.create_server(("127.0.0.1", ports[0])):  # the worker's own port was handed back
        pass


def test_workers_meet_then_hand_their_ports_to_tensorflow():
    """Each holds its own port open until all answer; the strategy is made only then, on every worker."""
    ports = _free_ports(2)
    servers: dict[int, socket.socket] = {}

    def tensorflow_server(index: int):
        """What making the strategy does to the port: TensorFlow's gRPC server listens on it."""
        servers[index] = socket.create_server(("", ports[index]))
        return tf.distribute.get_strategy()

    def join(index: int, delay: float) -> None:
        time.sleep(delay)
        cluster = ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, index)}, connect_timeout=20)
        connect_cluster(cluster, factory=lambda: tensorflow_server(index), poll=0.1)

    late = threading.Thread(target=join, args=(1, 1.0))
    late.start()
    try:
        join(0, 0.0)
        late.join(timeout=30)
        assert sorted(servers) == [0, 1]
    finally:
        for server in servers.values():
            server.close()


def test_a_lost_worker_is_named_with_its_address_and_the_way_on():
    ports = _free_ports(2)
    cluster = ClusterTask.from_env({"TF_CONFIG": _tf_config(ports, 0)})
    lost = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Error reported from /job:worker/task:1: "
                                      "The following tasks are unhealthy (stopped sending heartbeats):\n"
                                      "/job:worker/replica:0/task:1\nThe tasks have crashed.")
    message = readable_error(lost, cluster)
    assert message.startswith(f"lost worker 1 (127.0.0.1:{ports[1]}) during training") and "--resume" in message
    assert "\n" not in message, "one line"
    assert readable_error(lost).startswith("UnavailableError: ")  # without a cluster: as before
    unnamed = tf.errors.UnavailableError(None, None, "Collective ops is aborted by: Socket closed")
    assert readable_error(unnamed, cluster).startswith(f"lost one of worker 1 (127.0.0.1:{ports[1]}) during training")


@pytest.mark.parametrize("same", [True, False])
def test_workers_that_loaded_different_data_refuse_to_train(monkeypatch, same):
    """Two workers' CRCs compared by all-reduce (simulated here: the other worker's sums are added)."""
    images, labels = np.arange(64, dtype=np.uint8).reshape(4, 4, 4, 1), np.array([0, 1, 0, 1], np.float32)
    other = images if same else images[::-1]
    theirs: list[float] = []
    monkeypatch.setattr(core.training.cluster, "agreed_sum", lambda strategy, value: value + theirs.pop(0))

    class TwoWorkers:
        num_replicas_in_sync = 2

    crc = zlib.crc32(labels.data, zlib.crc32(np.ascontiguousarray(other).data)) & 0xFFFFF
    theirs[:] = [float(crc), float(crc * crc)]
    if same:
        core.training.cluster.check_same_data(TwoWorkers(), images, labels)
    else:
        with pytest.raises(ClusterError, match="loaded different data"):
            core.training.cluster.check_same_data(TwoWorkers(), images, labels)


def test_local_tf_configs_give_each_worker_its_own_port_and_index():
    configs = [json.loads(c) for c in local_tf_configs(3)]
    addresses = configs[0]["cluster"]["worker"]
    assert len(set(addresses)) == 3 and all(a.startswith("127.0.0.1:") for a in addresses)
    assert [c["task"] for c in configs] == [{"type": "worker", "index": i} for i in range(3)]
    assert all(c["cluster"]["worker"] == addresses for c in configs)


def test_a_non_chief_worker_never_makes_a_run_of_its_own(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TF_CONFIG", _tf_config(_free_ports(2), 1))
    assert main(["--preset", "Quick CPU demo", "--store", str(tmp_path)]) == 2
    assert "is not the chief" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
    # Given the chief's run folder where it cannot read it: a readable error, and still nothing written.
    assert main(["--run-dir", str(tmp_path / "nowhere"), "--device", "multiworker"]) == 2
    assert "cannot read" in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_bad_tf_config_fails_the_start_readably(tmp_path, monkeypatch, capsys):
    run = RunStore(tmp_path).create(preset("Quick CPU demo").with_overrides(**{"train.device": "multiworker"}))
    monkeypatch.setenv("TF_CONFIG", "not json")
    assert run_and_record(run, resume=False) == 2
    assert "TF_CONFIG is not valid JSON" in capsys.readouterr().err
    assert run.status().state == "created", "nothing was started"


# --------------------------------------------------------------------------- slow: real workers


def _config(**more):
    """VGG16 without pretrained weights (no BatchNorm) at 32 px: the head on cached frozen outputs, then block 5 on images."""
    return preset("Quick CPU demo").with_overrides(**{
        "data.image_size": 32, "data.demo_images_per_class": 40, "model.backbone": "vgg16", "model.weights": "none",
        "model.unfreeze_from_block": 5, "model.dropout": 0.0, "train.precision": "float32",
        "train.head.epochs": 2, "train.head.augment": False, "train.head.learning_rate": 1e-2,
        "train.finetune.epochs": 2, "train.finetune.augment": False, "train.finetune.learning_rate": 1e-4,
        "train.early_stopping_patience": 0, "train.progress_every_steps": 1, **more}).validate()


def _worker_env(tmp_path: Path) -> dict[str, str]:
    """The workers' temporary folders go under the test's own folder, so what they leave there can be checked."""
    scratch = tmp_path / "worker-tmp"
    scratch.mkdir(exist_ok=True)
    return {"TMPDIR": str(scratch), "CXR_STUDIO_CACHE": os.environ["CXR_STUDIO_CACHE"]}


def _worker_folders(tmp_path: Path) -> list[Path]:
    """The non-chief workers' temporary run folders left (TensorFlow's own autograph files are not ours)."""
    return list((tmp_path / "worker-tmp").glob("cxr-studio-*"))


@pytest.mark.slow
def test_two_workers_train_one_run_like_a_single_process(tmp_path, cache_dir):
    """Global batch 8 both ways (one process × 8; two workers × 4), same seed and data: same epochs, same model."""
    store = RunStore(tmp_path / "models")
    images = {"train.cache_frozen_features": False}  # both phases on images (the lifecycle test below caches)
    single = store.create(_config(**images, **{"name": "single", "train.batch_size": 8, "train.device": "cpu"}))
    assert run_and_record(single, resume=False) == 0, single.raw_status().error
    multi = store.create(_config(**images, **{"name": "two-workers", "train.batch_size": 4}))
    env = {**os.environ, **_worker_env(tmp_path), "PYTHONUNBUFFERED": "1"}
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "core.train", "--run-dir", str(multi.path), "--workers", "2"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.time() - started
    assert result.returncode == 0, result.stderr[-4000:]
    assert json.loads(result.stdout.strip().splitlines()[-1])["state"] == "finished"

    # One run folder per run: the other worker made none, and the chief's folder holds the run's files only.
    assert sorted(run.id for run in store.list()) == sorted([single.id, multi.id])
    assert {p.name for p in multi.path.iterdir()} == RUN_FILES
    status = multi.status()
    assert status.state == "finished" and status.device["strategy"] == "multiworker"
    assert status.device["workers"] == 2 and status.device["replicas"] == 2
    assert multi.read_json("plan.json")["workers"] == 2
    # Each epoch appears once (a second writer would have added its own rows), written by the chief alone.
    rows = multi.history("epoch")
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4]
    assert "worker 1" not in multi.log_path.read_text()
    # The other worker trained in its own temporary folder, and removed it.
    assert "worker 1 INFO worker 1 (127.0.0.1:" in result.stderr and "writes only to" in result.stderr
    assert not _worker_folders(tmp_path)

    # The same training as one process, to float32 rounding.
    for one, two in zip(single.epochs(), multi.epochs()):
        assert two["val_loss"] == pytest.approx(one["val_loss"], abs=VAL_LOSS_TOLERANCE), (one, two)
        assert two["iterations"] == one["iterations"], "the same number of steps per epoch (global batch 8)"
    assert multi.metrics()["roc_auc"] == pytest.approx(single.metrics()["roc_auc"], abs=AUC_TOLERANCE)
    one, two = (run.read_json("threshold.json")["validation"]["probabilities"] for run in (single, multi))
    assert max(abs(a - b) for a, b in zip(one, two)) < PROBABILITY_TOLERANCE, "the final models agree"
    print(f"\ntwo workers {seconds:.0f} s; val loss per epoch single/two: "
          + ", ".join(f"{a['val_loss']:.6f}/{b['val_loss']:.6f}" for a, b in zip(single.epochs(), multi.epochs()))
          + f"; test AUC {single.metrics()['roc_auc']:.4f}/{multi.metrics()['roc_auc']:.4f}")


@pytest.mark.slow
def test_stop_then_a_killed_worker_then_resume_finishes_the_run(tmp_path, cache_dir):
    """One run, three starts of two workers: a stop request ends both at the same step ("stopped"); SIGKILL of the
    non-chief fails the run on the chief, naming that worker; the last resume finishes. No epoch is lost or repeated."""
    store = RunStore(tmp_path / "models")
    run = store.create(_config(**{"name": "lifecycle", "train.batch_size": 4, "train.finetune.epochs": 3,
                                  "model.backbone": "small_cnn", "model.unfreeze_from_block": 4,
                                  "train.monitor": "val_exact_auc"}))  # each worker computes it over all of validation
    env = _worker_env(tmp_path)

    workers = start_local_workers(run, 2, env=env)
    wait_for(lambda: any(row["epoch"] == 2 for row in run.history("step")), 300, run)
    run.request_stop()
    assert [proc.wait(timeout=120) for proc in workers] == [0, 0]
    assert run.status().state == "stopped", run.log_tail()

    workers = start_local_workers(run, 2, resume=True, env=env)
    wait_for(lambda: any(row["epoch"] == 4 for row in run.history("step")), 300, run)
    workers[1].send_signal(signal.SIGKILL)
    killed = time.time()
    assert workers[0].wait(timeout=120) == 2
    failed_after = time.time() - killed
    status = run.status()
    assert status.state == "failed", run.log_tail()
    assert f"lost worker 1 (127.0.0.1:" in status.error and "--resume" in status.error, status.error
    workers[1].wait()

    workers = start_local_workers(run, 2, resume=True, env=env)
    assert [proc.wait(timeout=300) for proc in workers] == [0, 0]
    assert run.status().state == "finished", run.log_tail()
    rows = run.history("epoch")  # raw rows: an epoch trained twice would appear twice
    assert [row["epoch"] for row in rows] == [1, 2, 3, 4, 5]
    for phase, first in (("head", 1), ("finetune", 3)):
        mine = [row for row in rows if row["phase"] == phase]
        steps = mine[0]["iterations"]
        assert [row["iterations"] for row in mine] == [steps * k for k in range(1, len(mine) + 1)], phase
    assert run.metrics() and {p.name for p in run.path.iterdir()} == RUN_FILES
    assert not _worker_folders(tmp_path), "the killed worker's copy was removed by its next start"
    print(f"\nthe chief failed {failed_after:.0f} s after its worker was killed")
