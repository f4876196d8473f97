"""Serving a trained run over HTTP (``cxr-serve``): settings and the serve command here; the app itself in :mod:`core.serving.app`."""
from core.serving.settings import DEFAULT_PORT, KEYS_ENV, ServeSettings, SettingsError, is_loopback, serve_command

__all__ = ["DEFAULT_PORT", "KEYS_ENV", "ServeSettings", "SettingsError", "is_loopback", "serve_command"]
