"""The app's admission, time limit, loading and error paths, and the micro-batcher, with a stand-in model (no TensorFlow)."""
from __future__ import annotations

import asyncio
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from types import SimpleNamespace

import httpx
import numpy as np
import pytest

from core.data.decode import ImageLoadError
from core.evaluation.sites import OperatingPoint
from core.serving import ServeSettings
from core.serving.app import create_app
from core.serving.batching import MicroBatcher
from core.serving.keys import KeyRing
from core.serving.service import Explained, ModelService


class StandIn(ModelService):
    """A served run without a model: films decode to their length, the probability is length / 100."""

    def __init__(self, fail: bool = False):
        self.run = SimpleNamespace(id="stand-in")
        self.config = SimpleNamespace(data=SimpleNamespace(image_size=4, resize_mode="stretch"))
        self.point = OperatingPoint(0.5, "validation", "a fixed threshold 0.5")
        self.model_sha256 = "0" * 64
        self.state, self.error, self.fail = "loading", None, fail
        self.loading = threading.Event()
        self.loading.set()
        self.decoding = threading.Event()  # cleared: decoding blocks until the test sets it
        self.decoding.set()
        self.batches: list[int] = []

    def load(self) -> None:
        self.loading.wait(30)
        self.state, self.error = ("failed", "the stand-in failed to load") if self.fail else ("ready", None)

    def decode(self, data: bytes, filename: str = "") -> np.ndarray:
        self.decoding.wait(30)
        if data == b"not an image":
            raise ImageLoadError("not an image file (looks like a text file)")
        if data == b"crash":
            raise struct.error("unpack requires a buffer of 4 bytes")  # a decoder's own failure
        return np.full((4, 4, 3), len(data), np.float32), ()

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        self.batches.append(len(images))
        if images[0, 0, 0, 0] == 13:
            raise RuntimeError("the model broke")
        return images[:, 0, 0, 0] / 100

    def explain(self, image: np.ndarray, method: str = "gradcam", opacity: float = 0.4) -> Explained:
        return Explained(float(image[0, 0, 0]) / 100, b"\x89PNG", method, "top_conv", "normal")


@asynccontextmanager
async def _serving(service: StandIn, **settings):
    """The app for ``service`` with its lifespan running, and an HTTP client that calls it in process."""
    failures: list[str] = []
    app = create_app(ServeSettings("stand-in", **settings), service, KeyRing(), on_load_failure=failures.append)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://stand-in") as client:
            client.failures = failures
            yield client


async def _until(check, what: str) -> None:
    deadline = time.monotonic() + 30
    while not await check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


async def _ready(client: httpx.AsyncClient) -> None:
    async def ready() -> bool:
        return (await client.get("/v1/health")).status_code == 200
    await _until(ready, "the stand-in never became ready")


def test_a_film_is_answered_with_the_runs_fields():
    async def body():
        async with _serving(StandIn(), no_auth=True) as client:
            await _ready(client)
            answer = (await client.post("/v1/predict", content=b"x" * 70)).json()
            assert answer["probability"] == pytest.approx(0.7) and answer["call"] == "PNEUMONIA"
            assert answer["run_id"] == "stand-in" and answer["preprocessing"]["image_size"] == 4
            explained = (await client.post("/v1/explain", content=b"x" * 20)).json()
            assert explained["call"] == "NORMAL" and explained["heatmap"]["png_base64"] == "iVBORw=="
    asyncio.run(body())


def test_without_keys_and_without_no_auth_every_call_is_refused():
    async def body():
        async with _serving(StandIn()) as client:
            await _ready(client)
            assert (await client.post("/v1/predict", content=b"x")).json()["error"]["code"] == "unauthorized"
    asyncio.run(body())


def test_until_the_model_is_loaded_health_and_predict_say_not_ready():
    async def body():
        service = StandIn()
        service.loading.clear()
        async with _serving(service, no_auth=True) as client:
            health = await client.get("/v1/health")
            assert health.status_code == 503 and health.json()["error"]["code"] == "not_ready"
            assert health.headers["retry-after"] == "1" and "still loading" in health.json()["error"]["message"]
            assert (await client.post("/v1/predict", content=b"x")).status_code == 503
            service.loading.set()
            await _ready(client)
    asyncio.run(body())


def test_a_model_that_fails_to_load_is_reported_and_stops_the_server():
    async def body():
        async with _serving(StandIn(fail=True), no_auth=True) as client:
            async def reported() -> bool:
                return bool(client.failures)
            await _until(reported, "the failure was never reported")
            assert client.failures == ["the stand-in failed to load"]
            assert "failed to load" in (await client.get("/v1/health")).json()["error"]["message"]
    asyncio.run(body())


def test_bad_files_get_422_and_a_model_fault_gets_a_json_500_without_traceback():
    async def body():
        async with _serving(StandIn(), no_auth=True) as client:
            await _ready(client)
            for sent in (b"not an image", b"crash", b""):
                response = await client.post("/v1/predict", content=sent)
                assert response.status_code == 422 and response.json()["error"]["code"] == "bad_image", sent
            broken = await client.post("/v1/predict", content=b"x" * 13)
            assert broken.status_code == 500 and broken.json() == {"error": {
                "code": "internal", "message": "The server failed on this request; the fault is in its log."}}
            assert (await client.post("/v1/predict", content=b"x")).status_code == 200
    asyncio.run(body())


def test_work_past_the_time_limit_gets_504_and_keeps_its_slot_until_the_cpu_is_free():
    async def body():
        service = StandIn()
        async with _serving(service, no_auth=True, timeout_s=0.3, max_concurrent=1) as client:
            await _ready(client)
            service.decoding.clear()  # the decode thread is stuck on this film
            response = await client.post("/v1/predict", content=b"x" * 10)
            assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"
            assert (await client.get("/v1/health")).json()["in_flight"] == 1  # no pile-up: stuck work still counts
            assert (await client.post("/v1/predict", content=b"x")).json()["error"]["code"] == "busy"
            service.decoding.set()

            async def freed() -> bool:
                return (await client.get("/v1/health")).json()["in_flight"] == 0
            await _until(freed, "the slot was never freed")
            assert (await client.post("/v1/predict", content=b"x")).status_code == 200
    asyncio.run(body())


# --------------------------------------------------------------------------------------------- the batcher


async def _batches(submit_while_blocked: int, max_batch: int = 8, abandon: int = 0) -> tuple[list[int], list]:
    """One film runs while the model is held; ``submit_while_blocked`` more arrive; then the model is freed."""
    held = threading.Event()
    sizes: list[int] = []

    def run(images: np.ndarray) -> np.ndarray:
        sizes.append(len(images))
        held.wait(30)
        return images[:, 0]

    with ThreadPoolExecutor(1) as pool:
        batcher = MicroBatcher(run, pool, max_batch, max_wait_s=60.0, expected=lambda: 1)
        batcher.start()
        first = batcher.submit(np.array([0.0]))
        while not sizes:
            await asyncio.sleep(0.001)
        jobs = [batcher.submit(np.array([float(i)])) for i in range(1, submit_while_blocked + 1)]
        for job in jobs[:abandon]:
            batcher.abandon(job.future)
        held.set()
        results = await asyncio.wait_for(asyncio.gather(first.future, *(j.future for j in jobs[abandon:])), 30)
        await batcher.stop()
    assert all(job.future.cancelled() for job in jobs[:abandon])
    return sizes, results


def test_films_that_arrive_while_the_model_is_busy_go_together():
    sizes, results = asyncio.run(_batches(5))
    assert sizes == [1, 5] and results == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]


def test_a_batch_is_never_larger_than_batch_max():
    sizes, results = asyncio.run(_batches(10, max_batch=4))
    assert sizes == [1, 4, 4, 2] and results == [float(i) for i in range(11)]


def test_a_film_whose_request_gave_up_is_dropped_before_its_batch():
    sizes, results = asyncio.run(_batches(4, abandon=2))
    assert sizes == [1, 2] and results == [0.0, 3.0, 4.0]


def test_a_lone_film_does_not_wait_for_company_that_is_not_coming():
    # max_wait_s is 60 s and only this request is in flight: the batch must start at once (wait_for: 30 s).
    sizes, _ = asyncio.run(_batches(0))
    assert sizes == [1]
