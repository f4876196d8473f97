"""Where the quality benchmark reads and writes: the repository, the shared data and weights, results and report."""
from __future__ import annotations

from pathlib import Path

from core.config.paths import REPO_ROOT as REPO  # the one definition of the repository root

__all__ = ["REPO", "SHARED", "DEFAULT_KAGGLE", "DEFAULT_MEDMNIST", "WEIGHTS", "MOBILENET_025_FILE",
           "MOBILENETV2_035_FILE", "ORIGINALS", "RESTAGED_KAGGLE", "RESULTS_DIR", "REPORT_FILE", "RESULT_FILES", "OFFICIAL_TEST_IMAGES"]

SHARED = Path("..") / "shared" / "data"  # relative to the repository root; never this machine's absolute path
DEFAULT_KAGGLE = SHARED / "chest_xray"
DEFAULT_MEDMNIST = SHARED / "medmnist" / "pneumoniamnist.npz"
WEIGHTS = SHARED / "keras_weights"
ORIGINALS = SHARED / "chest_xray_train_aspect512"  # 1,747 training films re-staged from originals, with their sizes
# The staged copy with every training film's shape restored and validation from originals (core.data.restage);
# built by the benchmark the first time a row needs it, under the ignored .cache folder.
RESTAGED_KAGGLE = Path(".cache") / "chest_xray-restaged"
MOBILENET_025_FILE = WEIGHTS / "mobilenet_2_5_224_tf_no_top.h5"  # Keras's own file, same name as in the Keras cache
MOBILENETV2_035_FILE = WEIGHTS / "mobilenet_v2_0.35_224_no_top_from_tfjs.weights.h5"
RESULTS_DIR = Path("benchmarks") / "results" / "quality"  # relative to the repository root
REPORT_FILE = Path("benchmarks") / "RESULTS-quality.md"
RESULT_FILES = ("metrics.json", "config.json", "threshold.json", "ensemble.json")  # copied from each run folder
OFFICIAL_TEST_IMAGES = 624  # the official test split of both data sets (Kaggle chest_xray and PneumoniaMNIST)
