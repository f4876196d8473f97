"""Device choice on the run's Keras backend: CPU / one GPU / several (MirroredStrategy, or JAX's DataParallel) / MultiWorkerMirroredStrategy, mixed precision and XLA.

What multi-worker training needs beyond the strategy (``TF_CONFIG``, joining the cluster, agreeing
between workers) is in :mod:`core.training.cluster`; it is TensorFlow's alone.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config.backend import BackendError, current_backend

__all__ = ["DevicePlan", "DataParallelDevices", "plan_device", "cpu_has_bf16", "split_cpu", "describe_hardware",
           "visible_gpus", "set_seed", "enable_compile_cache", "BF16_CPU_SPEEDUP"]

log = logging.getLogger("cxr_studio.train")

# Measured train-step speed-up of mixed_bfloat16 over float32 on a 2-core AVX512-BF16 CPU (no AMX),
# 128 px, batch 16, whole network trainable, TF 2.21 / oneDNN: `python -m benchmarks.flops --backbones
# vgg16,resnet50v2` (benchmarks/RESULTS-performance.md §2).
# "auto" picks bf16 on such CPUs for the backbones listed here with a gain of at least BF16_CPU_MIN_GAIN;
# unmeasured ones keep float32 (the reason says so and how to try bf16).
BF16_CPU_SPEEDUP: dict[str, float] = {
    "vgg16": 2.0,
    "resnet50v2": 1.5,
    "small_cnn": 1.0,  # at 64 px, the quick demo's size: too small for bf16 to pay
}
BF16_CPU_MIN_GAIN = 1.2


@dataclass
class DevicePlan:
    """What training will run on, and why; shown in the UI and written to the run's status."""

    strategy: str  # "cpu" | "gpu" | "mirrored" (several local devices) | "multiworker"
    replicas: int  # over the whole cluster (workers × devices per worker) once a multi-worker cluster is joined
    gpus: int
    precision: str  # keras dtype policy
    jit_compile: bool
    reason: str
    workers: int = 1  # processes training together (MultiWorkerMirroredStrategy), this one included
    backend: str = "tensorflow"  # the Keras backend the run trains on
    gpu_names: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def make_strategy(self) -> Any:
        """A ``tf.distribute`` strategy on TensorFlow; on JAX, :class:`DataParallelDevices` (Keras's DataParallel when several)."""
        if self.backend != "tensorflow":
            return DataParallelDevices.for_plan(self)
        import tensorflow as tf  # heavy: TensorFlow

        if self.strategy == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices)
        if self.strategy == "multiworker":
            return tf.distribute.MultiWorkerMirroredStrategy()
        if self.strategy == "gpu":
            return tf.distribute.OneDeviceStrategy("/gpu:0")
        return tf.distribute.get_strategy()  # the default (no-op) strategy: plain CPU


@dataclass
class DataParallelDevices:
    """What ``fit`` needs of a strategy on JAX: ``scope()`` and ``num_replicas_in_sync``.

    With several devices, ``keras.distribution.DataParallel`` over all of them is set for the
    process (Keras's distribution is process-wide: the trainer clears it with :meth:`release`
    before the threshold and test evaluation, which run on one device). Each global batch is split
    across the devices; the feeder pads a last short batch to a multiple of their count.
    """

    devices: list

    @classmethod
    def for_plan(cls, plan: "DevicePlan") -> "DataParallelDevices":
        import jax  # heavy: JAX
        import keras  # heavy: Keras

        if plan.strategy == "mirrored":
            kind = "gpu" if plan.gpus else "cpu"
            devices = jax.devices(kind)
            if len(devices) > 1:
                keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
            return cls(devices)
        if plan.strategy == "gpu":
            return cls(jax.devices("gpu")[:1])
        return cls(jax.devices("cpu")[:1])

    @property
    def num_replicas_in_sync(self) -> int:
        return len(self.devices)

    def scope(self):
        return contextlib.nullcontext()

    @staticmethod
    def release() -> None:
        import keras  # heavy: Keras

        keras.distribution.set_distribution(None)


def cpu_has_bf16() -> bool:
    """True on CPUs with native bfloat16 matrix maths (AVX512-BF16 or AMX), where mixed bf16 pays."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def split_cpu(n: int) -> None:
    """Expose the CPU as ``n`` logical devices (to exercise MirroredStrategy without GPUs).

    Must run before TensorFlow initialises its devices.
    """
    if current_backend() != "tensorflow":
        raise BackendError("--cpu-devices splits TensorFlow's CPU; under JAX set "
                           f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before the process starts")
    import tensorflow as tf  # heavy: TensorFlow

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)


def plan_device(device: str = "auto", precision: str = "auto", jit_compile: bool | str = "auto", *,
                backbone: str | None = None) -> DevicePlan:
    """Pick the distribution strategy, dtype policy and XLA setting for this machine, on the current Keras backend.

    ``auto``: several GPUs → all of them (MirroredStrategy; on JAX, Keras's DataParallel), one GPU →
    that GPU, none → CPU; ``TF_CONFIG`` set → MultiWorkerMirroredStrategy (TensorFlow only). A GPU
    asked for where the backend sees none: a warning, then the CPU. Mixed precision: bfloat16 on
    GPUs of compute capability ≥ 8 (no loss scaling needed), float16 on older GPUs; on a CPU with
    AVX512-BF16 or AMX, bfloat16 for a ``backbone`` whose measured gain there
    (:data:`BF16_CPU_SPEEDUP`, measured on TensorFlow) is worth it, else float32. An explicit
    ``precision`` always wins. On JAX every step is XLA-compiled, whatever ``jit_compile`` says.
    """
    backend = current_backend()
    gpus = visible_gpus()
    reasons = [f"Keras on {backend}"]
    if device == "auto":
        if backend == "tensorflow" and os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
            device, why = "multiworker", "TF_CONFIG names a cluster"
        elif len(gpus) > 1:
            device, why = "mirrored", f"{len(gpus)} GPUs found"
        elif gpus:
            device, why = "gpu", f"1 GPU found ({gpus[0]})"
        else:
            device, why = "cpu", "no GPU found"
        reasons.append(f"device auto: {why}")
    elif device == "gpu" and not gpus:
        message = (f"device 'gpu' was asked for, but {backend} sees no GPU: training on the CPU "
                   f"(check the driver and the GPU install, README 'Training on a GPU')")
        log.warning("%s", message)
        device = "cpu"
        reasons.append(message)
    elif device == "multiworker" and backend != "tensorflow":
        raise BackendError(f"device multiworker (tf.distribute) needs the TensorFlow backend, not {backend}; "
                           "under JAX, 'mirrored' trains on every device of this host")
    replicas = 1
    if device == "mirrored":
        replicas = len(gpus) if gpus else _cpu_devices()
        if backend != "tensorflow":
            reasons.append(f"keras.distribution.DataParallel over {replicas} {'GPUs' if gpus else 'CPU devices'}")

    if precision == "auto":
        if gpus:
            major = _compute_capability_major()
            precision = "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"
            reasons.append(f"precision auto: GPU compute capability {major}.x")
        elif backend != "tensorflow":
            precision = "float32"
            reasons.append("precision auto: float32 on CPU (bf16 gains were measured on TensorFlow only)")
        else:
            precision, why = _cpu_precision(backbone)
            reasons.append(f"precision auto: {why}")
    if backend != "tensorflow":
        jit_compile = True  # Keras on JAX compiles every step with XLA
        reasons.append("XLA on (JAX compiles every step)")
    elif jit_compile == "auto":
        jit_compile = bool(gpus)
        reasons.append(f"XLA {'on' if jit_compile else 'off'} ({'GPU' if gpus else 'CPU: measured no faster per step in float32 and slower in bfloat16'})")
    return DevicePlan(device, replicas, len(gpus), precision, bool(jit_compile), "; ".join(reasons), backend=backend,
                      gpu_names=list(gpus))


def visible_gpus() -> list[str]:
    """The names of the GPUs the current Keras backend can train on (empty without one)."""
    if current_backend() != "tensorflow":
        import jax  # heavy: JAX

        try:
            return [str(d.device_kind) for d in jax.devices("gpu")]
        except RuntimeError:  # no GPU platform
            return []
    import tensorflow as tf  # heavy: TensorFlow

    names = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # noqa: BLE001 - a GPU without details is still a GPU
            names.append(gpu.name)
    return names


def _cpu_devices() -> int:
    if current_backend() != "tensorflow":
        import jax  # heavy: JAX

        return len(jax.devices("cpu"))
    import tensorflow as tf  # heavy: TensorFlow

    return len(tf.config.list_logical_devices("CPU"))


def _cpu_precision(backbone: str | None) -> tuple[str, str]:
    """float32 or mixed_bfloat16 on this CPU for this backbone, and why in words."""
    if not cpu_has_bf16():
        return "float32", "float32 on CPU (no AVX512-BF16/AMX)"
    gain = BF16_CPU_SPEEDUP.get(backbone) if backbone else None
    if gain is None:
        return "float32", ("float32 on CPU (bf16 available; its gain for "
                           f"{backbone or 'this model'} is unmeasured: choose mixed_bfloat16 to try it)")
    if gain >= BF16_CPU_MIN_GAIN:
        return "mixed_bfloat16", f"mixed_bfloat16 on CPU (AVX512-BF16/AMX; {backbone} train step {gain:.1f}× faster measured)"
    return "float32", f"float32 on CPU (bf16 available but {backbone} measured only {gain:.1f}× in bf16)"


def _compute_capability_major() -> int:
    """The first GPU's compute capability (major), 0 when unknown."""
    try:
        if current_backend() != "tensorflow":
            import jax  # heavy: JAX

            return int(str(jax.devices("gpu")[0].compute_capability).split(".")[0])
        import tensorflow as tf  # heavy: TensorFlow

        details = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0])
        return int(details.get("compute_capability", (0, 0))[0])
    except Exception:  # noqa: BLE001 - unknown GPU: be conservative
        return 0


def describe_hardware() -> dict:
    """A short description of what the current Keras backend sees, for the UI."""
    names = visible_gpus()
    return {"backend": current_backend(), "gpus": len(names), "gpu_names": names, "cpu_cores": os.cpu_count(),
            "cpu_bf16": cpu_has_bf16()}


def set_seed(seed: int) -> None:
    """``keras.utils.set_random_seed`` (Python, NumPy, Keras's generators, and TensorFlow's on TensorFlow).

    Keras also seeds TensorFlow on other backends whenever TensorFlow is installed, importing it (for
    tf.data, which a JAX run does not use): there TensorFlow is hidden from that one import, so a JAX
    trainer never loads it; Keras then remembers, for this process, that it has no TensorFlow.
    """
    import keras  # heavy: Keras

    if keras.backend.backend() == "tensorflow" or "tensorflow" in sys.modules:
        keras.utils.set_random_seed(seed)
        return
    sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError while this entry is None
    try:
        keras.utils.set_random_seed(seed)
    finally:
        del sys.modules["tensorflow"]


def enable_compile_cache(folder: Path) -> None:
    """Keep JAX's compiled programs on disk in ``folder`` (JAX's persistent compilation cache).

    Under JAX every train, test and predict step is compiled by XLA at its first call, and on a GPU that
    is most of a short run (benchmarks/results/gpu.json); the next run of the same model and shapes
    reads the programs instead. Process-wide, like Keras's dtype policy; a no-op on TensorFlow.
    """
    if current_backend() != "jax":
        return
    import jax  # heavy: JAX

    folder.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(folder))
