"""The HTTP API of one served run (FastAPI): predict, explain, health, model summary; keys, size and time limits, admission, JSON errors."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.data.decode import ImageLoadError
from core.serving.batching import Gate, MicroBatcher
from core.serving.card import model_summary
from core.serving.errors import ERROR_CODES, ApiError, error_body, image_error
from core.serving.keys import KeyRing
from core.serving.schemas import ErrorAnswer, Explanation, Health, ModelSummary, Prediction
from core.serving.service import ModelService
from core.serving.settings import ServeSettings
from core.serving.uploads import OPENAPI_BODY, Upload, parse_upload, read_body

__all__ = ["create_app", "LOGGER_NAME"]

LOGGER_NAME = "cxr.serve"
log = logging.getLogger(LOGGER_NAME)
RETRY_AFTER_S = "1"
_ERRORS = {status: {"model": ErrorAnswer, "description": ", ".join(code for code, (s, _) in ERROR_CODES.items()
                                                                     if s == status)}
           for status in sorted({status for status, _ in ERROR_CODES.values()})}
DESCRIPTION = """Serves one trained run of cxr-studio: P(PNEUMONIA) for a chest X-ray, the call at the run's
threshold, and a Grad-CAM overlay. **Research and education only: not for diagnosis.**

Send a film (JPEG, PNG or DICOM) as a multipart field `file` or as the raw body, with the API key as
`Authorization: Bearer KEY` or `X-API-Key: KEY`. Every error is `{"error": {"code", "message"}}`."""


class _Server:
    """What one app holds while it runs: the gate, the batcher, the two thread pools (no module-level state)."""

    def __init__(self, settings: ServeSettings, service: ModelService):
        self.settings = settings
        self.service = service
        self.gate = Gate(settings.max_concurrent)
        self.predicting = 0  # admitted predict requests not finished: the batcher waits for them, not for explains
        self.inference = ThreadPoolExecutor(1, thread_name_prefix="cxr-inference")  # the model runs here only
        self.decoding = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="cxr-decode")
        self.batcher = MicroBatcher(service.predict_batch, self.inference, settings.batch_max,
                                    settings.batch_wait_ms / 1000, expected=lambda: self.predicting)

    def ensure_ready(self) -> None:
        if self.service.state != "ready":
            what = "is still loading" if self.service.state == "loading" else "failed to load"
            raise ApiError("not_ready", f"the model of run {self.service.run.id} {what}",
                           {"Retry-After": RETRY_AFTER_S} if self.service.state == "loading" else {})

    def admit(self, predicting: bool) -> Callable[[], None]:
        """A slot for one request, or 503; returns the function that frees it (once)."""
        if not self.gate.try_enter():
            raise ApiError("busy", f"the server is running its limit of {self.gate.limit} requests; "
                           f"retry in {RETRY_AFTER_S} s", {"Retry-After": RETRY_AFTER_S})
        self.predicting += predicting
        freed = False

        def free(*_: Any) -> None:
            nonlocal freed
            if not freed:
                freed = True
                self.gate.leave()
                self.predicting -= predicting
        return free

    async def upload(self, request: Request) -> Upload:
        body = await read_body(request.stream(), request.headers.get("content-length"),
                               self.settings.max_upload_bytes)
        upload = parse_upload(request.headers.get("content-type"), body)
        if not upload.data:
            raise ApiError("bad_image", "the file is empty")
        return upload

    async def handle(self, request: Request, explain: dict[str, Any] | None) -> dict[str, Any]:
        """Admit, read, decode, infer, all within the time limit; the slot is freed when the CPU work is done."""
        self.ensure_ready()
        free = self.admit(predicting=explain is None)
        loop = asyncio.get_running_loop()
        running: Future | asyncio.Future | None = None  # CPU work that outlives the request when it times out
        phase = "upload"
        try:
            async with asyncio.timeout(self.settings.timeout_s):
                upload = await self.upload(request)
                phase = "work"
                running = self.decoding.submit(self.service.decode, upload.data, upload.filename)
                try:
                    image, notes = await asyncio.wrap_future(running)
                except ImageLoadError as exc:
                    raise image_error(str(exc), upload.dicom) from None
                except Exception as exc:  # noqa: BLE001 - a decoder's own crash on a hostile file is still a bad file
                    log.warning("decoding failed with %s", type(exc).__name__)
                    raise ApiError("bad_image", "the file cannot be decoded as an image") from None
                if explain is None:
                    job = self.batcher.submit(image)
                    running = job.future
                    probability = await asyncio.shield(job.future)
                    return self.service.answer(probability, notes)
                running = self.inference.submit(self.service.explain, image, explain["method"], explain["opacity"])
                done = await asyncio.wrap_future(running)
                return {**self.service.answer(done.probability, notes), "heatmap": {
                    "method": done.method, "layer": done.layer, "explained": done.explained,
                    "opacity": explain["opacity"], "media_type": "image/png",
                    "png_base64": self.service.png_base64(done.png)}}
        except TimeoutError:
            limit = f"{self.settings.timeout_s:g} s"
            if phase == "upload":
                raise ApiError("upload_timeout", f"the upload took longer than the {limit} limit") from None
            raise ApiError("timeout", f"the request took longer than the {limit} limit and was cancelled") from None
        finally:
            if running is None or running.done():
                free()
            elif isinstance(running, asyncio.Future):  # a film in the batcher: dropped if its batch has not started
                self.batcher.abandon(running)
                running.add_done_callback(free)
            else:  # a decode or an explanation already on a thread: its slot stays taken until it ends
                running.add_done_callback(lambda _: loop.call_soon_threadsafe(free))

    def health(self) -> dict[str, Any]:
        self.ensure_ready()
        return {"status": "ready", "run_id": self.service.run.id, "model_sha256": self.service.model_sha256,
                "in_flight": self.gate.in_flight, "max_concurrent": self.gate.limit,
                "batch_max": self.settings.batch_max, "batches": self.batcher.stats.to_dict()}

    def close(self) -> None:
        self.inference.shutdown(wait=False, cancel_futures=True)
        self.decoding.shutdown(wait=False, cancel_futures=True)


def _error_response(code: str, message: str, headers: dict[str, str] | None = None,
                    status: int | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status or ERROR_CODES[code][0], headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": {"code", "message"}}``; never a traceback."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        if exc.code not in ("busy", "not_ready"):  # floods (saturation, health polled while loading) go unlogged
            log.info("%s %s → %d %s", request.method, request.url.path, exc.status, exc.code)
        return _error_response(exc.code, exc.message, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized", 413: "too_large"}
        code = codes.get(exc.status_code, "bad_request" if exc.status_code < 500 else "internal")
        text = exc.detail if isinstance(exc.detail, str) and exc.status_code not in codes else ERROR_CODES[code][1]
        return _error_response(code, text, getattr(exc, "headers", None), status=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = (exc.errors() or [{}])[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("query", "body"))
        return _error_response("invalid_request", f"{where or 'request'}: {first.get('msg', 'not valid')}")

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__, exc_info=exc)
        return _error_response("internal", "the server failed on this request; the fault is in its log")


def create_app(settings: ServeSettings, service: ModelService, keys: KeyRing,
               on_load_failure: Callable[[str], None] | None = None) -> FastAPI:
    """The API for ``service``'s run. The model loads on the inference thread once the server starts;
    ``/v1/health`` answers 503 until it is ready (and for good, with ``on_load_failure`` called, if it fails)."""
    server = _Server(settings, service)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.batcher.start()
        loading = asyncio.get_running_loop().run_in_executor(server.inference, service.load)

        def loaded(_: Any) -> None:
            if service.state == "failed":
                log.error("%s", service.error)
                if on_load_failure is not None:
                    on_load_failure(service.error or "the model failed to load")
            else:
                log.info("run %s is ready (model sha256 %s…)", service.run.id, service.model_sha256[:12])
        loading.add_done_callback(loaded)
        try:
            yield
        finally:
            await server.batcher.stop()
            server.close()

    app = FastAPI(title="cxr-studio model server", version="1", description=DESCRIPTION, lifespan=lifespan)
    _install_error_handlers(app)
    bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")
    header = APIKeyHeader(name="X-API-Key", auto_error=False, description="the API key")

    def require_key(credentials: HTTPAuthorizationCredentials | None = Depends(bearer),
                    api_key: str | None = Depends(header)) -> None:
        if settings.no_auth:
            return
        key = credentials.credentials if credentials is not None else api_key
        if not keys.accepts(key):
            raise ApiError("unauthorized", "a valid API key is needed (Authorization: Bearer KEY or X-API-Key)",
                           {"WWW-Authenticate": "Bearer"})

    guarded = [Depends(require_key)]
    errors = {status: _ERRORS[status] for status in (400, 401, 408, 413, 415, 422, 500, 503, 504)}

    @app.post("/v1/predict", response_model=Prediction, dependencies=guarded, responses=errors,
              openapi_extra=OPENAPI_BODY, summary="P(PNEUMONIA) and the call for one film")
    async def predict(request: Request) -> dict[str, Any]:
        return await server.handle(request, explain=None)

    @app.post("/v1/explain", response_model=Explanation, dependencies=guarded, responses=errors,
              openapi_extra=OPENAPI_BODY, summary="The prediction plus the heatmap overlay as a base64 PNG")
    async def explain(request: Request,
                      method: Literal["gradcam", "gradcam++", "scorecam"] = Query(
                          "gradcam", description="Grad-CAM (default), Grad-CAM++ or Score-CAM (ten times slower)"),
                      opacity: float = Query(0.4, ge=0.0, le=1.0, description="heatmap opacity over the film")
                      ) -> dict[str, Any]:
        return await server.handle(request, explain={"method": method, "opacity": opacity})

    @app.get("/v1/health", response_model=Health, responses={503: _ERRORS[503]},
             summary="Ready once the model is loaded (no key needed)")
    async def health() -> dict[str, Any]:
        return server.health()

    @app.get("/v1/model", response_model=ModelSummary, dependencies=guarded, responses={401: _ERRORS[401]},
             summary="The model card's summary")
    async def model() -> dict[str, Any]:
        return model_summary(service.run, service.point, service.model_sha256)

    return app
