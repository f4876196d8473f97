"""cxr-serve as a user meets it: a real server process, a real HTTP client, the starter's own test films."""
from __future__ import annotations

import base64
import io
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
from image_samples import dicom, encode, gradient
from PIL import Image
from serve_helpers import API_KEY, REPO, STARTER

from core.data.datasets import CLASS_NAMES

METRICS = json.loads((REPO / "models" / STARTER / "metrics.json").read_text())
FILMS = [(REPO / p["file"], p["probability"]) for p in METRICS["predictions"]]
PATIENT_TAGS = ("Doe^Jane", "SECRET-123")  # what image_samples.dicom writes into its files


def _health(url: str) -> dict:
    response = httpx.get(f"{url}/v1/health", timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def _error(response: httpx.Response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and body["error"]["code"] == code, body
    message = body["error"]["message"]
    assert message[0].isupper() and message.endswith(".") and "Traceback" not in message
    return message


# --------------------------------------------------------------------------------------------- predictions


def test_every_test_film_gets_the_probability_in_metrics_json(client, servers):
    assert len(FILMS) >= 40
    for i, (path, expected) in enumerate(FILMS):
        data = path.read_bytes()
        if i % 2:  # both ways of sending a film
            response = client.post("/v1/predict", files={"file": (path.name, data, "image/jpeg")})
        else:
            response = client.post("/v1/predict", content=data, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["probability"] == pytest.approx(expected, abs=1e-5), path.name
        assert answer["call"] == CLASS_NAMES[int(answer["probability"] >= answer["threshold"])]
    assert answer["run_id"] == STARTER and answer["threshold_source"] == "validation"
    assert answer["threshold"] == pytest.approx(METRICS["threshold"])
    assert answer["preprocessing"] == {**answer["preprocessing"], "image_path": "core.data.images.load_image",
                                       "image_size": 224, "resize_mode": "center_square", "field_of_view": "body",
                                       "remove_markers": True, "intensity": "clahe"}  # the starter's own settings
    assert answer["preprocessing"]["notes"] and "CLAHE applied" in answer["preprocessing"]["notes"][-1]
    assert answer["model_sha256"] == _health(servers["main"].url)["model_sha256"]
    assert "not for diagnosis" in answer["notice"]


def test_explain_gives_the_same_probability_and_a_png_overlay(client):
    path, expected = FILMS[-1]
    response = client.post("/v1/explain", params={"opacity": 0.5},
                           files={"file": (path.name, path.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["probability"] == pytest.approx(expected, abs=1e-5)
    heatmap = answer["heatmap"]
    assert heatmap["method"] == "gradcam" and heatmap["opacity"] == 0.5 and heatmap["media_type"] == "image/png"
    assert heatmap["explained"] == answer["call"].lower()
    overlay = Image.open(io.BytesIO(base64.b64decode(heatmap["png_base64"])))
    assert overlay.format == "PNG" and overlay.size == (224, 224) and overlay.mode == "RGB"
    assert np.asarray(overlay).std() > 5  # a picture, not a blank


def test_health_model_card_and_openapi_page(client, servers):
    health = httpx.get(f"{servers['main'].url}/v1/health").json()  # no key needed
    assert health["status"] == "ready" and health["run_id"] == STARTER and health["max_concurrent"] == 32
    card = client.get("/v1/model").json()
    assert card["run_id"] == STARTER and card["backbone"]["name"] == "efficientnet_lite0"
    assert card["test_evaluation"]["n"] == METRICS["n"] and card["serve_command"] == f"cxr-serve {STARTER}"
    assert card["official_test_evaluation"]["n"] == 624
    schema = httpx.get(f"{servers['main'].url}/openapi.json").json()
    assert {"/v1/predict", "/v1/explain", "/v1/health", "/v1/model"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert httpx.get(f"{servers['main'].url}/docs").status_code == 200


# --------------------------------------------------------------------------------------------- access and limits


def test_a_request_without_a_valid_key_gets_401_and_the_key_is_never_logged(servers):
    url, film = servers["main"].url, FILMS[0][0].read_bytes()
    for headers in ({}, {"X-API-Key": "wrong-key-0123456789"}, {"Authorization": "Bearer nope"},
                    {"Authorization": f"Basic {API_KEY}"}):
        response = httpx.post(f"{url}/v1/predict", content=film, headers={"Content-Type": "image/jpeg", **headers})
        _error(response, 401, "unauthorized")
        assert response.headers["www-authenticate"] == "Bearer"
    _error(httpx.get(f"{url}/v1/model"), 401, "unauthorized")
    ok = httpx.post(f"{url}/v1/predict", content=film, headers={"Authorization": f"Bearer {API_KEY}",
                                                                "Content-Type": "image/jpeg"}, timeout=60)
    assert ok.status_code == 200
    assert API_KEY not in servers["main"].log()


def test_an_upload_over_the_size_limit_gets_413(client):
    too_big = bytes(32 * 1024 * 1024 + 1)  # the default limit is 32 MB
    _error(client.post("/v1/predict", content=too_big, headers={"Content-Type": "image/jpeg"}), 413, "too_large")

    def chunks():  # no Content-Length: counted as it streams in
        for _ in range(33):
            yield bytes(1024 * 1024)
    _error(client.post("/v1/predict", content=chunks(), headers={"Content-Type": "image/png"}), 413, "too_large")
    assert client.post("/v1/predict", content=FILMS[0][0].read_bytes()).status_code == 200


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge size (the decompression-bomb shape of tests/core/data)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _hostile() -> dict[str, tuple[bytes, str]]:
    film = FILMS[0][0].read_bytes()
    tagged = dicom(gradient().astype(np.uint16) * 16, "MONOCHROME2")
    return {
        "empty": (b"", "image/jpeg"),
        "random": (bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "image/jpeg"),
        "text": (b"Patient notes\nnothing to see here\n" * 20, "application/octet-stream"),
        "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n", "image/png"),
        "zip": (b"PK\x03\x04" + b"\0" * 100, "image/png"),
        "html": (b"<!doctype html><html><body>hi</body></html>", "image/png"),
        "tiny": (encode(Image.fromarray(gradient(10, 10)), "PNG"), "image/png"),
        "bomb-400MP": (_png_claiming(20000, 20000), "image/png"),
        "over-limit-108MP": (_png_claiming(12000, 9000), "image/png"),
        "truncated-jpeg": (film[: len(film) // 2], "image/jpeg"),
        "truncated-dicom": (tagged[:-500], "application/dicom"),
        "dicom-header-only": (tagged[:400], "application/dicom"),
    }


def test_hostile_files_get_a_4xx_json_answer_and_the_server_keeps_serving(client, servers):
    for name, (data, kind) in _hostile().items():
        response = client.post("/v1/predict", content=data, headers={"Content-Type": kind})
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert response.json()["error"]["code"] in ("bad_image", "bad_request"), name
        assert not any(tag in response.text for tag in PATIENT_TAGS), name
        assert _health(servers["main"].url)["status"] == "ready"
    explained = client.post("/v1/explain", files={"file": ("x.dcm", _hostile()["truncated-dicom"][0])})
    _error(explained, 422, "bad_image")
    assert client.post("/v1/predict", content=FILMS[1][0].read_bytes()).status_code == 200


def test_sixteen_bit_png_and_dicom_with_patient_tags_are_read_and_the_tags_go_nowhere(client, servers):
    g16 = gradient().astype(np.uint16) * 16
    for data, kind in ((encode(Image.fromarray(g16), "PNG"), "image/png"),
                       (dicom(g16, "MONOCHROME2", window=(1000.0, 2000.0)), "application/dicom")):
        response = client.post("/v1/predict", content=data, headers={"Content-Type": kind})
        assert response.status_code == 200, response.text
        assert 0.0 <= response.json()["probability"] <= 1.0
        assert not any(tag in response.text for tag in PATIENT_TAGS)
    response = client.post("/v1/explain", files={"file": ("scan.dcm", dicom(g16, "MONOCHROME1"), "application/dicom")})
    assert response.status_code == 200 and not any(tag in response.text for tag in PATIENT_TAGS)
    assert not any(tag in servers["main"].log() for tag in PATIENT_TAGS)


def test_a_body_that_is_not_a_film_gets_415_or_400(client):
    _error(client.post("/v1/predict", json={"film": "x"}), 415, "unsupported_media_type")
    _error(client.post("/v1/predict", files={"note": (None, b"no file here")}), 400, "bad_request")
    _error(client.get("/v1/predict"), 405, "method_not_allowed")
    _error(client.get("/v1/nothing"), 404, "not_found")
    _error(client.post("/v1/explain", params={"method": "magic"}, content=b"x"), 422, "invalid_request")


# --------------------------------------------------------------------------------------------- saturation and time


class HeldRequest:
    """A predict request whose body is sent in two parts: until the second, the server holds it in flight."""

    def __init__(self, url: str, film: bytes):
        host, port = url.removeprefix("http://").split(":")
        self.film = film
        self.sock = socket.create_connection((host, int(port)), timeout=120)
        head = (f"POST /v1/predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                f"Content-Length: {len(film)}\r\n\r\n").encode()
        self.sock.sendall(head + film[:1000])

    def finish(self) -> None:
        self.sock.sendall(self.film[1000:])

    def response(self) -> tuple[int, dict]:
        data = b""
        while b"\r\n\r\n" not in data:
            data += self.sock.recv(65536) or b"!"
        head, _, body = data.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += self.sock.recv(65536)
        self.sock.close()
        return int(head.split()[1]), json.loads(body)


def _wait_for_in_flight(url: str, count: int) -> None:
    """Until the server reports ``count`` requests admitted (polled; the assertion is on what it says)."""
    deadline = time.monotonic() + 60
    while _health(url)["in_flight"] != count:
        assert time.monotonic() < deadline, f"in_flight never reached {count}"
        time.sleep(0.05)


def test_past_the_concurrency_limit_a_request_gets_503_at_once_and_health_still_answers(servers):
    url, film = servers["limited"].url, FILMS[2][0].read_bytes()
    held = HeldRequest(url, film)
    _wait_for_in_flight(url, 1)
    busy = httpx.post(f"{url}/v1/predict", content=film, headers={"Content-Type": "image/jpeg"}, timeout=30)
    _error(busy, 503, "busy")
    assert busy.headers["retry-after"] == "1"
    assert _health(url)["in_flight"] == 1  # health does not queue behind the held request
    held.finish()
    status, answer = held.response()
    assert status == 200 and answer["probability"] == pytest.approx(FILMS[2][1], abs=1e-5)
    _wait_for_in_flight(url, 0)
    assert httpx.post(f"{url}/v1/predict", content=film, timeout=60).status_code == 200


def test_a_request_over_the_time_limit_is_cancelled_and_frees_its_slot(servers):
    url = servers["limited"].url
    held = HeldRequest(url, FILMS[3][0].read_bytes())  # never finished: the server's 8 s limit ends it
    status, answer = held.response()
    assert status == 408 and answer["error"]["code"] == "upload_timeout"
    assert _health(url)["in_flight"] == 0


@pytest.mark.slow
def test_eight_clients_for_twenty_seconds_get_no_error_and_health_answers_throughout(servers):
    url = servers["main"].url
    films = [path.read_bytes() for path, _ in FILMS[:16]]
    stop = time.monotonic() + 20
    outcomes: list[int] = []
    health: list[int] = []

    def one_client(index: int) -> None:
        with httpx.Client(base_url=url, timeout=120, headers={"X-API-Key": API_KEY}) as http:
            i = index
            while time.monotonic() < stop:
                outcomes.append(http.post("/v1/predict", content=films[i % len(films)]).status_code)
                i += 8

    threads = [threading.Thread(target=one_client, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    while any(thread.is_alive() for thread in threads):
        health.append(httpx.get(f"{url}/v1/health", timeout=30).status_code)
        time.sleep(0.5)
    for thread in threads:
        thread.join()
    assert len(outcomes) > 8 and set(outcomes) == {200}, {s: outcomes.count(s) for s in set(outcomes)}
    assert len(health) > 5 and set(health) == {200}
