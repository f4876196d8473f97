"""Constants the server tests share: the repository, the starter run, the test API key."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
STARTER = "starter-efficientnet-lite0"
API_KEY = "test-key-0123456789abcdef"  # a test key; the servers hold only its sha256
