"""Device plan: the precision "auto" picks on a CPU, per backbone, and that an explicit choice wins."""
from __future__ import annotations

import pytest

from core.training import device
from core.training.device import plan_device


@pytest.fixture
def bf16_cpu(monkeypatch):
    """A CPU with AVX512-BF16 and no GPU, whatever this machine has."""
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(device, "visible_gpus", lambda: [])


@pytest.fixture
def plain_cpu(monkeypatch):
    monkeypatch.setattr(device, "cpu_has_bf16", lambda: False)
    monkeypatch.setattr(device, "visible_gpus", lambda: [])


def test_vgg16_gets_bfloat16_on_a_bf16_cpu(bf16_cpu):
    plan = plan_device(backbone="vgg16")
    assert plan.strategy == "cpu"
    assert plan.precision == "mixed_bfloat16"
    assert "vgg16" in plan.reason and "faster measured" in plan.reason


def test_without_a_backbone_the_cpu_stays_float32(bf16_cpu):
    plan = plan_device()  # the old positional call keeps the old behaviour
    assert plan.precision == "float32"
    assert "unmeasured" in plan.reason


def test_small_cnn_stays_float32(bf16_cpu):
    assert plan_device("auto", "auto", "auto", backbone="small_cnn").precision == "float32"


def test_unknown_gain_stays_float32_and_says_how_to_try(bf16_cpu):
    plan = plan_device(backbone="not-measured")
    assert plan.precision == "float32"
    assert "mixed_bfloat16" in plan.reason


def test_cpu_without_bf16_stays_float32(plain_cpu):
    plan = plan_device(backbone="vgg16")
    assert plan.precision == "float32"
    assert "no AVX512-BF16" in plan.reason


def test_explicit_precision_wins(bf16_cpu):
    assert plan_device("cpu", "float32", False, backbone="vgg16").precision == "float32"
    assert plan_device("cpu", "mixed_bfloat16", False, backbone="small_cnn").precision == "mixed_bfloat16"

