"""The command lines start quiet: no TensorFlow C++ start-up lines on stderr, unless asked for."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

CODE = ("from core.jobs.commands.startup import import_tensorflow_quietly\n"
        "import_tensorflow_quietly()\n"
        "import tensorflow as tf\n"
        "print(int(tf.reduce_sum(tf.ones(3))))\n")


def _run(**env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "CXR_STUDIO_TF_VERBOSE")}
    return subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=300,
                          env={**environ, **env})


@pytest.mark.slow
def test_tensorflow_start_up_lines_are_hidden_and_can_be_shown():
    quiet = _run()
    assert quiet.returncode == 0 and quiet.stdout.strip() == "3"
    assert "oneDNN" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr, quiet.stderr
    verbose = _run(CXR_STUDIO_TF_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="0")
    assert verbose.returncode == 0 and verbose.stdout.strip() == "3"
    assert verbose.stderr.strip(), "with CXR_STUDIO_TF_VERBOSE the start-up notes come through"
