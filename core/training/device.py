"""Device choice: CPU / one GPU / MirroredStrategy / MultiWorkerMirroredStrategy, mixed precision and XLA.

What multi-worker training needs beyond the strategy (``TF_CONFIG``, joining the cluster, agreeing
between workers) is in :mod:`core.training.cluster`.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import tensorflow as tf

__all__ = ["DevicePlan", "plan_device", "cpu_has_bf16", "split_cpu", "describe_hardware", "BF16_CPU_SPEEDUP"]

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

    strategy: str  # "cpu" | "gpu" | "mirrored" | "multiworker"
    replicas: int  # over the whole cluster (workers × devices per worker) once a multi-worker cluster is joined
    gpus: int
    precision: str  # keras dtype policy
    jit_compile: bool
    reason: str
    workers: int = 1  # processes training together (MultiWorkerMirroredStrategy), this one included

    def to_dict(self) -> dict:
        return asdict(self)

    def make_strategy(self) -> tf.distribute.Strategy:
        if self.strategy == "mirrored":
            gpus = tf.config.list_logical_devices("GPU")
            devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
            return tf.distribute.MirroredStrategy(devices=devices)
        if self.strategy == "multiworker":
            return tf.distribute.MultiWorkerMirroredStrategy()
        if self.strategy == "gpu":
            return tf.distribute.OneDeviceStrategy("/gpu:0")
        return tf.distribute.get_strategy()  # the default (no-op) strategy: plain CPU


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
    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * n)


def plan_device(device: str = "auto", precision: str = "auto", jit_compile: bool | str = "auto", *,
                backbone: str | None = None) -> DevicePlan:
    """Pick the distribution strategy, dtype policy and XLA setting for this machine.

    ``auto``: several GPUs → MirroredStrategy, one GPU → that GPU, none → CPU; ``TF_CONFIG`` set
    → MultiWorkerMirroredStrategy. Mixed precision: bfloat16 on GPUs of compute capability ≥ 8
    (no loss scaling needed), float16 on older GPUs; on a CPU with AVX512-BF16 or AMX, bfloat16
    for a ``backbone`` whose measured gain there (:data:`BF16_CPU_SPEEDUP`) is worth it, else
    float32. An explicit ``precision`` always wins.
    """
    gpus = tf.config.list_physical_devices("GPU")
    reasons = []
    if device == "auto":
        if os.environ.get("TF_CONFIG") and json.loads(os.environ["TF_CONFIG"]).get("cluster"):
            device, why = "multiworker", "TF_CONFIG names a cluster"
        elif len(gpus) > 1:
            device, why = "mirrored", f"{len(gpus)} GPUs found"
        elif gpus:
            device, why = "gpu", "1 GPU found"
        else:
            device, why = "cpu", "no GPU found"
        reasons.append(f"device auto: {why}")
    elif device == "gpu" and not gpus:
        raise RuntimeError("device 'gpu' was chosen but TensorFlow sees no GPU; choose 'auto' or 'cpu'")
    replicas = len(gpus) if device == "mirrored" and gpus else (
        len(tf.config.list_logical_devices("CPU")) if device == "mirrored" else 1)

    if precision == "auto":
        if gpus:
            major = _compute_capability_major(gpus[0])
            precision = "mixed_bfloat16" if major >= 8 else "mixed_float16" if major >= 7 else "float32"
            reasons.append(f"precision auto: GPU compute capability {major}.x")
        else:
            precision, why = _cpu_precision(backbone)
            reasons.append(f"precision auto: {why}")
    if jit_compile == "auto":
        jit_compile = bool(gpus)
        reasons.append(f"XLA {'on' if jit_compile else 'off'} ({'GPU' if gpus else 'CPU: measured no faster per step in float32 and slower in bfloat16'})")
    return DevicePlan(device, replicas, len(gpus), precision, bool(jit_compile), "; ".join(reasons))


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


def _compute_capability_major(gpu) -> int:
    try:
        details = tf.config.experimental.get_device_details(gpu)
        return int(details.get("compute_capability", (0, 0))[0])
    except Exception:  # noqa: BLE001 - unknown GPU: be conservative
        return 0


def describe_hardware() -> dict:
    """A short description of what TensorFlow sees, for the UI."""
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for gpu in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(gpu).get("device_name", gpu.name))
        except Exception:  # noqa: BLE001
            names.append(gpu.name)
    return {"gpus": len(gpus), "gpu_names": names, "cpu_cores": os.cpu_count(), "cpu_bf16": cpu_has_bf16()}
