"""The server's settings, keys, uploads and error sentences, and the command's refusals, without a server."""
from __future__ import annotations

import asyncio
import os
import shutil

import httpx
import pytest
from serve_helpers import REPO, STARTER

from core.jobs.commands.serve import main, parse_settings
from core.serving import ServeSettings, SettingsError, is_loopback, serve_command
from core.serving.errors import ApiError, image_error, sentence
from core.serving.keys import KeyRing, key_digest, presented_key
from core.serving.uploads import parse_upload, read_body


def test_serve_command_is_what_a_user_types():
    assert serve_command("starter-efficientnet-lite0") == "cxr-serve starter-efficientnet-lite0"
    assert serve_command("run-1", site="St Mary's") == "cxr-serve run-1 --site 'St Mary'\"'\"'s'"
    assert serve_command("run-1", site="") == "cxr-serve run-1"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True), ("::1", True),
                                            ("[::1]", True), ("127.0.0.2", True), ("0.0.0.0", False),
                                            ("10.1.2.3", False), ("example.org", False)])
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_no_auth_is_refused_off_loopback_and_bad_limits_name_their_flag():
    ServeSettings("r", no_auth=True).validate()
    with pytest.raises(SettingsError, match="--no-auth is refused on 0.0.0.0"):
        ServeSettings("r", host="0.0.0.0", no_auth=True).validate()
    for field, flag in (("max_concurrent", "--max-concurrent"), ("batch_max", "--batch-max"),
                        ("timeout_s", "--timeout"), ("port", "--port")):
        with pytest.raises(SettingsError, match=flag):
            ServeSettings("r", **{field: 0}).validate()


def test_command_line_settings(monkeypatch):
    monkeypatch.setenv("PORT", "9123")
    settings, _ = parse_settings(["run-1", "--no-batching", "--max-concurrent", "4"])
    assert (settings.port, settings.batch_max, settings.max_concurrent, settings.host) == (9123, 1, 4, "127.0.0.1")
    with pytest.raises(SystemExit) as stop:
        parse_settings(["run-1", "--no-auth", "--host", "0.0.0.0"])
    assert stop.value.code == 2


def test_the_command_refuses_a_missing_run_missing_keys_and_an_unknown_site(tmp_path, monkeypatch, capsys):
    shutil.copytree(REPO / "models" / STARTER, tmp_path / STARTER)
    monkeypatch.delenv("CXR_SERVE_API_KEYS", raising=False)
    store = ["--store", str(tmp_path)]
    assert main(["no-such-run", "--no-auth", *store]) == 2
    assert main([STARTER, *store]) == 2
    assert "no API keys" in capsys.readouterr().err
    assert main([STARTER, "--no-auth", "--site", "nowhere", *store]) == 2
    assert "nowhere" in capsys.readouterr().err
    (tmp_path / "keys").write_text("short\n")
    assert main([STARTER, "--keys-file", str(tmp_path / "keys"), *store]) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_keys_are_kept_as_digests_and_checked_against_every_one(tmp_path, monkeypatch):
    key, other = "first-key-0123456789", "second-key-0123456789"
    (tmp_path / "keys").write_text(f"# team keys\n{key}\n\nsha256:{key_digest(other).hex()}\n")
    monkeypatch.setenv("CXR_SERVE_API_KEYS", "env-key-0123456789abc, another-env-key-0123")
    ring = KeyRing.load(tmp_path / "keys", dict(os.environ))
    assert len(ring) == 4 and key not in repr(ring)
    assert ring.accepts(key) and ring.accepts(other) and ring.accepts("another-env-key-0123")
    assert not ring.accepts("first-key-012345678") and not ring.accepts(None) and not ring.accepts("")
    assert not KeyRing().accepts(key)
    with pytest.raises(SettingsError, match="cannot be read"):
        KeyRing.load(tmp_path / "missing", {})


def test_the_key_comes_from_a_bearer_token_or_the_x_api_key_header():
    assert presented_key({"authorization": "Bearer abc"}) == "abc"
    assert presented_key({"authorization": "bearer  abc "}) == "abc"
    assert presented_key({"x-api-key": "xyz"}) == "xyz"
    assert presented_key({"authorization": "Basic abc"}) is None


def _multipart(files: dict) -> tuple[str, bytes]:
    request = httpx.Request("POST", "http://server/v1/predict", files=files)
    return request.headers["content-type"], request.read()


def test_an_upload_is_one_multipart_file_or_the_raw_body():
    kind, body = _multipart({"file": ("film.jpeg", b"\xff\xd8jpeg bytes", "image/jpeg")})
    upload = parse_upload(kind, body)
    assert upload.data == b"\xff\xd8jpeg bytes" and not upload.dicom and upload.filename == ""
    assert parse_upload(*_multipart({"file": ("scan.DCM", b"dicom", "application/octet-stream")})).dicom
    assert parse_upload(*_multipart({"image": ("scan", b"dicom", "application/dicom")})).dicom  # any file field
    assert parse_upload("application/dicom", b"x").filename == "upload.dcm"
    assert parse_upload(None, b"raw").data == b"raw"
    assert parse_upload("image/png; charset=binary", b"png").data == b"png"
    for kind, body, code in (("application/json", b"{}", "unsupported_media_type"),
                             ("multipart/form-data", b"x", "bad_request"),
                             (*_multipart({"note": (None, b"text only")}), "bad_request")):
        with pytest.raises(ApiError) as err:
            parse_upload(kind, body)
        assert err.value.code == code


def test_the_body_is_refused_as_soon_as_it_is_over_the_limit():
    async def chunks(n: int, size: int):
        for _ in range(n):
            yield bytes(size)

    assert asyncio.run(read_body(chunks(3, 10), "30", 30)) == bytes(30)
    assert asyncio.run(read_body(chunks(3, 10), None, 30)) == bytes(30)
    for declared, n in (("31", 0), (None, 4)):
        with pytest.raises(ApiError) as err:
            asyncio.run(read_body(chunks(n, 10), declared, 30))
        assert err.value.code == "too_large" and err.value.status == 413
    with pytest.raises(ApiError, match="not a number"):
        asyncio.run(read_body(chunks(1, 1), "ten", 30))


def test_error_messages_are_one_sentence_and_dicom_parser_words_are_dropped():
    assert sentence("image is 10x10 px; at least 32 px a side is needed") == \
        "Image is 10x10 px; at least 32 px a side is needed."
    message = image_error("not a readable DICOM image (ValueError: Doe^Jane (x))", dicom=True).message
    assert message == "Not a readable DICOM image." and "Doe" not in message
    kept = image_error("image is 20000x20000 px (400 MP); the limit is 100 MP", dicom=False)
    assert "(400 MP)" in kept.message and kept.status == 422
    with pytest.raises(ValueError):
        ApiError("no_such_code", "x")


def test_a_site_profile_sets_the_threshold_and_the_calibrated_probability(tmp_path):
    from core.serving.card import model_summary
    from core.serving.service import ModelService, file_sha256
    from core.store.runs import RunStore

    shutil.copytree(REPO / "models" / STARTER, tmp_path / STARTER)
    (tmp_path / STARTER / "sites").mkdir()
    (tmp_path / STARTER / "sites" / "clinic.json").write_text(
        '{"name": "clinic", "threshold": 0.8, "temperature": 2.0, "method": "youden", "n": 40}')
    run = RunStore(tmp_path).get(STARTER)
    service = ModelService(run, site="clinic")  # the model is not loaded: the answer's fields are read at start
    answer = service.answer(0.7)
    assert (answer["call"], answer["threshold"], answer["threshold_source"]) == ("NORMAL", 0.8, "site:clinic")
    assert 0.5 < answer["calibrated_probability"] < 0.7  # temperature 2 pulls the probability towards 0.5
    assert answer["model_sha256"] == file_sha256(run.model_path) and service.state == "loading"
    card = model_summary(run, service.point, service.model_sha256)
    assert card["serve_command"] == f"cxr-serve {STARTER} --site clinic"
    assert card["operating_point"]["site_profiles"] == ["clinic"]
    assert ModelService(run).answer(0.7)["call"] == "PNEUMONIA"


def test_a_run_with_preprocessing_answers_what_was_done_to_each_film(tmp_path):
    import json

    import numpy as np

    from core.data.images import load_image
    from core.data.preprocess import Preprocessing
    from core.serving.schemas import Prediction
    from core.serving.service import ModelService
    from core.store.runs import RunStore

    film = sorted((REPO / "sample" / "chest_xray" / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    shutil.copytree(REPO / "models" / STARTER, tmp_path / "plain" / STARTER)
    config = json.loads((tmp_path / "plain" / STARTER / "config.json").read_text())
    config["data"].update(field_of_view="full", remove_markers=False, intensity="none", resize_mode="stretch")
    (tmp_path / "plain" / STARTER / "config.json").write_text(json.dumps(config))
    starter = ModelService(RunStore(tmp_path / "plain").get(STARTER))  # the starter's model without preprocessing
    image, notes = starter.decode(film.read_bytes(), film.name)
    plain = starter.answer(0.7, notes)["preprocessing"]
    assert notes == () and "notes" not in plain and plain["intensity"] == "none" and plain["field_of_view"] == "full"
    assert np.array_equal(image, load_image(film, 224))

    shutil.copytree(REPO / "models" / STARTER, tmp_path / STARTER)
    config = json.loads((tmp_path / STARTER / "config.json").read_text())
    config["data"].update(field_of_view="body", remove_markers=True, intensity="window", resize_mode="stretch")
    (tmp_path / STARTER / "config.json").write_text(json.dumps(config))
    service = ModelService(RunStore(tmp_path).get(STARTER))
    image, notes = service.decode(film.read_bytes(), film.name)
    settings = Preprocessing("body", True, "window")
    assert np.array_equal(image, load_image(film, 224, preprocessing=settings))
    answer = service.answer(0.7, notes)
    assert answer["preprocessing"]["notes"] == list(notes) and len(notes) == 3 and "window" in notes[-1]
    assert answer["preprocessing"]["remove_markers"] is True and answer["preprocessing"]["intensity"] == "window"
    assert Prediction(**answer).preprocessing.notes == list(notes)  # the published answer's shape takes it
