"""The dashboard runs Keras on TensorFlow even when $KERAS_BACKEND asks for JAX (Grad-CAM and export need it)."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from core.config.paths import REPO_ROOT


def test_the_dashboard_runs_on_tensorflow_whatever_keras_backend_says(tmp_path):
    script = textwrap.dedent("""
        from streamlit.testing.v1 import AppTest

        app = AppTest.from_file("dashboard/app.py", default_timeout=120).run()
        assert not app.exception, [e.value for e in app.exception]
        import keras
        print("backend", keras.backend.backend())
    """)
    env = {**os.environ, "KERAS_BACKEND": "jax", "CXR_STUDIO_RUNS": str(tmp_path / "models"),
           "CXR_STUDIO_CACHE": str(tmp_path / "cache")}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "backend tensorflow" in result.stdout
