"""Device choice: CPU / one GPU / MirroredStrategy / MultiWorkerMirroredStrategy, mixed precision and XLA."""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import tensorflow as tf

__all__ = ["DevicePlan", "plan_device", "cpu_has_bf16", "split_cpu", "describe_hardware"]


@dataclass
class DevicePlan:
    """What training will run on, and why; shown in the UI and written to the run's status."""

    strategy: str  # "cpu" | "gpu" | "mirrored" | "multiworker"
    replicas: int
    gpus: int
    precision: str  # keras dtype policy
    jit_compile: bool
    reason: str

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


def plan_device(device: str = "auto", precision: str = "auto", jit_compile: bool | str = "auto") -> DevicePlan:
    """Pick the distribution strategy, dtype policy and XLA setting for this machine.

    ``auto``: several GPUs → MirroredStrategy, one GPU → that GPU, none → CPU; ``TF_CONFIG`` set
    → MultiWorkerMirroredStrategy. Mixed precision: bfloat16 on GPUs of compute capability ≥ 8
    (no loss scaling needed), float16 on older GPUs, float32 on CPU unless asked (bf16 on CPU is
    faster for large backbones on AVX512-BF16 but slower for small ones; the user may choose it).
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
            precision = "float32"
            reasons.append("precision auto: float32 on CPU" + (" (bf16 available: choose mixed_bfloat16 for large backbones)" if cpu_has_bf16() else ""))
    if jit_compile == "auto":
        jit_compile = bool(gpus)
        reasons.append(f"XLA {'on' if jit_compile else 'off'} ({'GPU' if gpus else 'CPU: compile time does not pay off on short runs'})")
    return DevicePlan(device, replicas, len(gpus), precision, bool(jit_compile), "; ".join(reasons))


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
