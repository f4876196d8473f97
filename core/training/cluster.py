"""Multi-worker training under ``MultiWorkerMirroredStrategy``: the cluster, joining it, agreeing in it.

This process's place in the cluster comes from ``TF_CONFIG`` (:class:`ClusterTask`; read without
TensorFlow, so the command line and the local launcher stay light). :func:`connect_cluster` joins
within a bounded time (TensorFlow itself waits for a missing worker forever); :func:`barrier`,
:func:`agreed_flag` and :func:`check_same_data` keep the workers in step; and
:func:`prepare_multiworker_fit` works around two Keras 3 bugs that stop ``fit`` under this strategy
with more than one worker. TensorFlow is imported inside the functions that need it.
"""
from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import tensorflow as tf

__all__ = ["ClusterTask", "ClusterError", "connect_cluster", "barrier", "agreed_sum", "agreed_flag",
           "check_same_data", "prepare_multiworker_fit", "CONNECT_TIMEOUT_SECONDS", "CONNECT_TIMEOUT_ENV"]

CONNECT_TIMEOUT_SECONDS = 60.0  # how long a worker waits for the whole cluster before it gives up
CONNECT_TIMEOUT_ENV = "CXR_STUDIO_CONNECT_TIMEOUT"


class ClusterError(RuntimeError):
    """``TF_CONFIG`` cannot be used, or the cluster it names did not form."""


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, as ``TF_CONFIG`` describes it.

    ``tasks`` lists every training task as ``(job, index, "host:port")``, the chief first: the
    ``chief`` job's task when there is one, else ``worker`` 0, as TensorFlow decides it.
    """

    tasks: tuple[tuple[str, int, str], ...]
    job: str
    index: int
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, connect_timeout: float | None = None) -> "ClusterTask | None":
        """The task ``$TF_CONFIG`` names, or None when it names no cluster.

        ``connect_timeout``: seconds to wait for every worker (default ``$CXR_STUDIO_CONNECT_TIMEOUT``, else 60).

        Raises:
            ClusterError: ``TF_CONFIG`` is not JSON, or its task is not one of its cluster's workers.
        """
        environ = os.environ if environ is None else environ
        raw = environ.get("TF_CONFIG")
        if not raw:
            return None
        try:
            spec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ClusterError(f"TF_CONFIG is not valid JSON ({exc})") from None
        cluster = spec.get("cluster") or {}
        if not cluster:
            return None
        tasks = tuple((job, i, str(address)) for job in ("chief", "worker") for i, address in enumerate(cluster.get(job) or []))
        task = spec.get("task") or {}
        job, index = task.get("type"), task.get("index", 0)
        if not any(t[0] == job and t[1] == index for t in tasks):
            raise ClusterError(f"TF_CONFIG's task {job!r} {index!r} is not in its cluster "
                               f"({', '.join(f'{j} {i} {a}' for j, i, a in tasks) or 'no chief or worker tasks'})")
        if connect_timeout is None:
            connect_timeout = float(environ.get(CONNECT_TIMEOUT_ENV) or CONNECT_TIMEOUT_SECONDS)
        return cls(tasks, job, int(index), float(connect_timeout))

    @property
    def is_chief(self) -> bool:
        return (self.job, self.index) == self.tasks[0][:2]

    @property
    def workers(self) -> int:
        return len(self.tasks)

    @property
    def address(self) -> str:
        """This task in words: ``"worker 0 (10.0.0.1:12345) (chief)"``."""
        return self.describe(self.job, self.index)

    @property
    def own_address(self) -> str:
        """This task's ``host:port``."""
        return next(a for j, i, a in self.tasks if (j, i) == (self.job, self.index))

    def describe(self, job: str, index: int) -> str:
        """``"worker 1 (10.0.0.2:12345)"``; ``"(chief)"`` is added to the chief."""
        address = next((a for j, i, a in self.tasks if j == job and i == index), "?")
        return f"{job} {index} ({address})" + (" (chief)" if (job, index) == self.tasks[0][:2] and job != "chief" else "")

    def name_tasks_in(self, message: str) -> list[str]:
        """The tasks a TensorFlow error names (``/job:worker/replica:0/task:1``), described with their addresses."""
        found = []
        for job, index in re.findall(r"/job:(\w+)/(?:replica:\d+/)?task:(\d+)", message):
            name = self.describe(job, int(index))
            if name not in found and (job, int(index)) != (self.job, self.index):
                found.append(name)
        return found

    def others(self) -> list[tuple[str, int, str]]:
        """Every task but this one, as ``(job, index, "host:port")``."""
        return [task for task in self.tasks if task[:2] != (self.job, self.index)]

    def unreachable(self, timeout: float = 2.0) -> list[str]:
        """The other tasks whose port takes no TCP connection now, each with the reason."""
        out = []
        for job, index, address in self.others():
            why = _tcp_probe(address, timeout)
            if why:
                out.append(f"{self.describe(job, index)}: {why}")
        return out


def _tcp_probe(address: str, timeout: float) -> str | None:
    """None when ``host:port`` takes a TCP connection, else why not, in words."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return None
    except ConnectionRefusedError:
        return "connection refused (the worker is not running, or not yet)"
    except socket.timeout:
        return f"no answer within {timeout:.0f} s (host down or a firewall)"
    except (OSError, ValueError) as exc:
        return str(exc) or type(exc).__name__


def connect_cluster(cluster: ClusterTask, *, factory: Callable[[], "tf.distribute.Strategy"] | None = None,
                    poll: float = 0.5) -> "tf.distribute.Strategy":
    """``MultiWorkerMirroredStrategy`` once every worker is there; :class:`ClusterError` after ``cluster.connect_timeout``.

    TensorFlow's own join waits for a missing worker forever, holding the interpreter lock (no
    thread, heartbeat or SIGTERM handler runs meanwhile). So the workers first meet without it:
    each holds its own port open with a plain TCP listener and waits until every other task's
    port takes a connection; only then is the strategy made (its gRPC server takes the port over).
    A worker that is missing when the time is up is named with its address and the reason. Must
    run before TensorFlow initialises its runtime. Once every port has answered, a worker that dies
    before TensorFlow's join completes still leaves the others waiting (a window of about a second).
    """
    _rendezvous(cluster, poll)
    if factory is None:
        import tensorflow as tf  # heavy: TensorFlow

        factory = tf.distribute.MultiWorkerMirroredStrategy
    strategy = factory()
    barrier(strategy)
    return strategy


def _rendezvous(cluster: ClusterTask, poll: float) -> None:
    """Hold this task's port open and wait until every other task's port answers (see :func:`connect_cluster`)."""
    port = cluster.own_address.rpartition(":")[2]
    try:
        listener = socket.create_server(("", int(port)))  # SO_REUSEADDR: TensorFlow binds the port right after
    except OSError as exc:
        raise ClusterError(f"{cluster.address} cannot listen on port {port}: {exc} (is another program or worker "
                           "using it?)") from None
    listener.settimeout(poll)
    done = threading.Event()

    def answer() -> None:
        while not done.is_set():
            try:
                conn, _ = listener.accept()
            except (socket.timeout, OSError):
                continue
            with conn:  # let the prober close first, so the port is left with no TIME_WAIT of ours
                conn.settimeout(2.0)
                try:
                    conn.recv(1)
                except OSError:
                    pass

    thread = threading.Thread(target=answer, name="cluster-rendezvous", daemon=True)
    thread.start()
    deadline = time.monotonic() + cluster.connect_timeout
    try:
        while True:
            missing = cluster.unreachable(timeout=min(2.0, max(poll, 0.1)))
            if not missing:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(f"the multi-worker cluster did not form within {cluster.connect_timeout:.0f} s: "
                                   + "; ".join(missing) + f" (this is {cluster.address})")
            time.sleep(poll)
    finally:
        done.set()
        listener.close()
        thread.join()


def barrier(strategy: "tf.distribute.Strategy") -> int:
    """Return once every replica of the strategy got here (one all-reduce); the number of replicas."""
    return int(agreed_sum(strategy, 1.0))


def agreed_sum(strategy: "tf.distribute.Strategy", value: float) -> float:
    """The sum of ``value`` over every replica of every worker (each worker gives its own)."""
    import tensorflow as tf  # heavy: TensorFlow

    per_replica = strategy.run(lambda: tf.constant(value, tf.float64))
    return float(strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None))


def agreed_flag(strategy: "tf.distribute.Strategy", flag: bool) -> bool:
    """True on every worker when any worker's ``flag`` is true: a decision all take at the same step."""
    return agreed_sum(strategy, 1.0 if flag else 0.0) > 0


def check_same_data(strategy: "tf.distribute.Strategy", *arrays: np.ndarray) -> None:
    """Raise :class:`ClusterError` unless every worker loaded byte-identical arrays (a CRC-32 compared by all-reduce).

    Workers read the data from their own disks; a host with another copy of the data set would
    otherwise train on it silently.
    """
    crc = 0
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).data, crc)
    mine = crc & 0xFFFFF  # 20 bits: sums over up to 8,192 replicas stay exact in float64
    total, squares = (round(agreed_sum(strategy, float(v))) for v in (mine, mine * mine))
    if total * total != squares * strategy.num_replicas_in_sync:  # (Σx)² = nΣx² only when every x is the same
        raise ClusterError("the workers loaded different data (their training and validation images differ): "
                           "every host needs the same data set at the same path")


def prepare_multiworker_fit(model: Any) -> None:
    """Let Keras 3's ``fit`` run this model under a ``MultiWorkerMirroredStrategy`` of several workers.

    Two Keras 3 bugs (keras-team/keras#20585, tensorflow/tensorflow#72388; still in Keras 3.15) stop
    it there and nowhere else: before training, ``fit`` takes one batch from the input and
    all-reduces the whole tuple across workers to build the model's state (which fails), and each
    step reduces the scalar metric values along an axis 0 they do not have. On this instance only:
    the state is built from the input's element spec instead (shapes are all it needs; no batch is
    taken, so the first epoch sees the same shuffled order a single process would), and the step's
    scalars are given that axis, so the reduction is the mean over replicas Keras means. Epoch-end
    logs are read from the metric variables, which the strategy sums over every replica, as
    before. Nothing changes under any other strategy or with a single worker.
    """
    import tensorflow as tf  # heavy: TensorFlow

    strategy = model.distribute_strategy
    if not (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._num_workers > 1):  # noqa: SLF001 - no public accessor
        return

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None and data_batch is None:
            data_batch = iterator.data_adapter.get_tf_dataset().element_spec
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)  # noqa: SLF001 - what Keras's own method calls

    def with_axis(step):
        def run(data):
            return {key: tf.reshape(value, [1]) if value.shape.rank == 0 else value
                    for key, value in step(data).items()}
        return run

    model._maybe_symbolic_build = symbolic_build  # noqa: SLF001
    model.train_step = with_axis(model.train_step)
    model.test_step = with_axis(model.test_step)
