"""API keys: read from a file or an environment variable, kept only as sha256 digests, checked in constant time."""
from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from core.serving.settings import KEYS_ENV, SettingsError

__all__ = ["KeyRing", "key_digest", "presented_key"]

_HASHED = re.compile(r"^sha256:([0-9a-fA-F]{64})$")
MIN_KEY_CHARS = 16  # a key a person could guess is no key


def key_digest(key: str) -> bytes:
    """The sha256 digest a key is stored as."""
    return hashlib.sha256(key.encode("utf-8")).digest()


def presented_key(headers: Mapping[str, str]) -> str | None:
    """The key a request carries: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``."""
    auth = headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return headers.get("x-api-key", "").strip() or None


@dataclass(frozen=True)
class KeyRing:
    """The digests of the keys that may call the API; the keys themselves are not kept."""

    digests: tuple[bytes, ...] = ()

    @classmethod
    def from_lines(cls, lines: Iterable[str], where: str) -> KeyRing:
        """One key per line (blank lines and ``#`` comments skipped); a line ``sha256:<hex>`` is a key's digest
        already, so a deployment need not hold the key in clear."""
        digests = []
        for number, raw in enumerate(lines, start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            hashed = _HASHED.match(line)
            if hashed:
                digests.append(bytes.fromhex(hashed.group(1)))
            elif len(line) < MIN_KEY_CHARS:
                raise SettingsError(f"{where}, key {number}: an API key needs at least {MIN_KEY_CHARS} characters")
            else:
                digests.append(key_digest(line))
        return cls(tuple(digests))

    @classmethod
    def load(cls, keys_file: str | Path | None, environ: Mapping[str, str]) -> KeyRing:
        """The keys of ``keys_file`` and of ``$CXR_SERVE_API_KEYS`` (comma-separated) together."""
        ring = cls()
        if keys_file is not None:
            try:
                text = Path(keys_file).read_text(encoding="utf-8")
            except OSError as exc:
                raise SettingsError(f"--keys-file cannot be read ({exc.strerror or exc})") from None
            ring = cls(ring.digests + cls.from_lines(text.splitlines(), "--keys-file").digests)
        if environ.get(KEYS_ENV, "").strip():
            ring = cls(ring.digests + cls.from_lines(environ[KEYS_ENV].split(","), KEYS_ENV).digests)
        return ring

    def __len__(self) -> int:
        return len(self.digests)

    def accepts(self, key: str | None) -> bool:
        """Whether ``key`` is one of the ring's; every digest is compared (hmac.compare_digest), hit or miss."""
        presented = key_digest(key or "")
        found = False
        for digest in self.digests:
            found |= hmac.compare_digest(presented, digest)
        return found and key is not None
