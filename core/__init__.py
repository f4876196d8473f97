"""cxr-studio's core library: data, models, training, the run store, evaluation and explanations (no UI)."""
import os

# TensorFlow prints C++ start-up notes (oneDNN, CPU features, CUDA probing) before any of our output;
# the CLIs and the dashboard start quiet unless the user asks for them (TF_CPP_MIN_LOG_LEVEL=0).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
