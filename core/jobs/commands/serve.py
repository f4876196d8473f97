"""The ``cxr-serve`` / ``python -m core.serve`` command: serve one trained run over HTTP (FastAPI on uvicorn)."""
from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

import uvicorn

from core.evaluation.sites import SiteError
from core.jobs.commands.arguments import add_store_flag
from core.jobs.commands.startup import import_tensorflow_quietly
from core.serving.app import LOGGER_NAME, create_app
from core.serving.keys import KeyRing
from core.serving.service import ModelService
from core.serving.settings import DEFAULT_PORT, KEYS_ENV, ServeSettings, SettingsError
from core.store.runs import RunError, RunStore

__all__ = ["main", "parse_settings"]

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    defaults = ServeSettings(run_id="")
    parser = argparse.ArgumentParser(
        prog="cxr-serve", description="Serve a trained run over HTTP: POST /v1/predict and /v1/explain, "
        "GET /v1/health and /v1/model, the OpenAPI page at /docs (research use only; docs/serving.md).")
    parser.add_argument("run_id", metavar="RUN_ID", help="run id in the store (cxr-serve starter-efficientnet-lite0)")
    parser.add_argument("--site", default=None, metavar="NAME",
                        help="call films at this site profile's threshold (cxr-site list RUN); default the run's own")
    add_store_flag(parser)
    parser.add_argument("--host", default=defaults.host, help="address to bind (default %(default)s: this machine only)")
    parser.add_argument("--port", type=int, default=None,
                        help=f"port (default $PORT when set, else {DEFAULT_PORT})")
    keys = parser.add_argument_group("access")
    keys.add_argument("--keys-file", default=None, metavar="PATH",
                      help=f"API keys, one a line (or sha256:<hex> of one); also ${KEYS_ENV}, comma-separated")
    keys.add_argument("--no-auth", action="store_true", help="no API key needed: allowed on a loopback host only")
    limits = parser.add_argument_group("limits and batching")
    limits.add_argument("--max-upload-mb", type=float, default=defaults.max_upload_mb,
                        help="larger uploads get 413 (default %(default)s)")
    limits.add_argument("--timeout", dest="timeout_s", type=float, default=defaults.timeout_s, metavar="SECONDS",
                        help="upload, decoding and inference of one request; then it is cancelled (default %(default)s)")
    limits.add_argument("--max-concurrent", type=int, default=defaults.max_concurrent,
                        help="predict/explain requests admitted at once; beyond, 503 with Retry-After "
                             "(default %(default)s)")
    limits.add_argument("--batch-max", type=int, default=defaults.batch_max,
                        help="films per forward pass when requests arrive together (default %(default)s)")
    limits.add_argument("--batch-wait-ms", type=float, default=defaults.batch_wait_ms,
                        help="how long a film waits for others already on their way (default %(default)s)")
    limits.add_argument("--no-batching", action="store_true", help="one film per forward pass (--batch-max 1)")
    limits.add_argument("--decode-threads", type=int, default=defaults.decode_threads,
                        help="threads decoding uploads (default %(default)s)")
    parser.add_argument("--no-access-log", action="store_true", help="no line per request in the log")
    return parser


def parse_settings(argv: Sequence[str] | None = None) -> tuple[ServeSettings, argparse.Namespace]:
    """The settings of a ``cxr-serve`` command line (validated), and the parsed flags."""
    parser = _parser()
    args = parser.parse_args(argv)
    port = args.port if args.port is not None else int(os.environ.get("PORT") or DEFAULT_PORT)
    settings = ServeSettings(run_id=args.run_id, site=args.site, host=args.host, port=port, no_auth=args.no_auth,
                             max_upload_mb=args.max_upload_mb, timeout_s=args.timeout_s,
                             max_concurrent=args.max_concurrent, batch_max=1 if args.no_batching else args.batch_max,
                             batch_wait_ms=args.batch_wait_ms, decode_threads=args.decode_threads,
                             access_log=not args.no_access_log)
    try:
        settings.validate()
    except SettingsError as exc:
        parser.error(str(exc))
    return settings, args


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until interrupted. Exit status 2 when the run, its site profile, the keys or a flag is unusable,
    1 when the model fails to load or the address cannot be bound."""
    settings, args = parse_settings(argv)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    log = logging.getLogger(LOGGER_NAME)
    try:
        keys = KeyRing.load(args.keys_file, os.environ)
        if not settings.no_auth and not keys:
            raise SettingsError(f"no API keys: pass --keys-file PATH or set {KEYS_ENV} (or --no-auth on a "
                                "loopback host)")
        service = ModelService(RunStore(args.store).get(settings.run_id), settings.site)
    except (SettingsError, SiteError, RunError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if settings.no_auth:
        log.warning("serving without API keys (--no-auth): anyone who can reach %s:%d can call the API",
                    settings.host, settings.port)
    log.info("serving run %s (%s) on http://%s:%d; %d API key(s); limits: %g MB, %g s, %d at once; batches of "
             "up to %d", service.run.id, service.point.label, settings.host, settings.port, len(keys),
             settings.max_upload_mb, settings.timeout_s, settings.max_concurrent, settings.batch_max)
    import_tensorflow_quietly()  # before the model loads in the server's thread, so its start-up notes stay out
    failed: list[str] = []

    def stop(reason: str) -> None:
        failed.append(reason)
        server.should_exit = True

    app = create_app(settings, service, keys, on_load_failure=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_config=None,
                                           access_log=settings.access_log, server_header=False,
                                           timeout_graceful_shutdown=5))
    server.run()
    return 1 if failed or not server.started else 0
