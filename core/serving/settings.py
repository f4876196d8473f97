"""A model server's settings (address, keys, limits, micro-batching) as a dataclass with ``validate()``, and the command that serves a run."""
from __future__ import annotations

import ipaddress
import shlex
from dataclasses import dataclass

__all__ = ["ServeSettings", "SettingsError", "is_loopback", "serve_command", "KEYS_ENV", "DEFAULT_PORT"]

KEYS_ENV = "CXR_SERVE_API_KEYS"  # comma-separated API keys (a secret store's environment variable)
DEFAULT_PORT = 8000


class SettingsError(ValueError):
    """A server setting that cannot work; the message names the flag and says why, in one sentence."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only: ``localhost`` or a loopback address."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve_command(run_id: str, site: str | None = None) -> str:
    """The shell command that serves a run over HTTP (shown on the Runs page and in the model card)."""
    words = ["cxr-serve", run_id] + (["--site", site] if site else [])
    return " ".join(shlex.quote(word) for word in words)


@dataclass
class ServeSettings:
    """How ``cxr-serve`` serves one run. See docs/serving.md for what each limit protects."""

    run_id: str
    site: str | None = None  # a site profile's threshold (sites/<name>.json); None: the run's validation one
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    no_auth: bool = False  # serve without API keys: loopback hosts only
    max_upload_mb: float = 32.0  # request bodies above this get 413 (a DICOM film is 5-30 MB)
    timeout_s: float = 30.0  # upload + decode + inference; past it the request is cancelled (408 / 504)
    max_concurrent: int = 32  # predict/explain requests admitted at once; the next gets 503 with Retry-After
    batch_max: int = 8  # micro-batching: at most this many films in one forward pass (1: no batching)
    batch_wait_ms: float = 5.0  # how long a lone film waits for company while other requests are on their way
    decode_threads: int = 2  # threads that decode uploads beside the one inference thread
    access_log: bool = True

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    def validate(self) -> ServeSettings:
        """Raise :class:`SettingsError` naming the first bad field; returns self."""
        if not self.run_id.strip():
            raise SettingsError("run: give the id of a run in the store (cxr-serve RUN_ID)")
        if not 0 < self.port < 65536:
            raise SettingsError(f"--port must be 1..65535; got {self.port}")
        if self.no_auth and not is_loopback(self.host):
            raise SettingsError(f"--no-auth is refused on {self.host}: it is allowed on a loopback host only "
                                "(127.0.0.1, ::1, localhost); give API keys instead")
        checks = (("--max-upload-mb", self.max_upload_mb, 0.001), ("--timeout", self.timeout_s, 0.01),
                  ("--max-concurrent", self.max_concurrent, 1), ("--batch-max", self.batch_max, 1),
                  ("--batch-wait-ms", self.batch_wait_ms, 0), ("--decode-threads", self.decode_threads, 1))
        for flag, value, low in checks:
            if value < low:
                raise SettingsError(f"{flag} must be at least {low}; got {value}")
        if self.batch_max > 256:
            raise SettingsError(f"--batch-max must be at most 256; got {self.batch_max}")
        return self
