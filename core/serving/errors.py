"""The API's errors: a stable code, one human sentence, the HTTP status, and the JSON body every error has."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ApiError", "ERROR_CODES", "error_body", "sentence", "image_error"]

# Every code the API answers with, its status and what it means (docs/serving.md lists the same).
ERROR_CODES: dict[str, tuple[int, str]] = {
    "bad_request": (400, "the request is malformed (no film in it, a bad header)"),
    "unauthorized": (401, "no API key, or not a valid one"),
    "not_found": (404, "no such endpoint"),
    "method_not_allowed": (405, "the endpoint does not take this method"),
    "upload_timeout": (408, "the upload took longer than the time limit"),
    "too_large": (413, "the upload is over the size limit"),
    "unsupported_media_type": (415, "the body is neither a multipart form nor raw image bytes"),
    "bad_image": (422, "the file is not a usable image (empty, not an image, truncated, too small, too many pixels)"),
    "invalid_request": (422, "a query parameter is out of range"),
    "busy": (503, "as many requests as the server admits are running; retry after Retry-After seconds"),
    "not_ready": (503, "the model is still loading, or failed to load"),
    "timeout": (504, "decoding and inference took longer than the time limit; the request was cancelled"),
    "internal": (500, "a fault of the server, not of the request"),
}


def sentence(text: str) -> str:
    """One sentence: a capital first letter, a full stop at the end."""
    text = " ".join(str(text).split()).rstrip(" .;:")
    return (text[:1].upper() + text[1:] + ".") if text else "Error."


@dataclass
class ApiError(Exception):
    """An answer other than success: ``code`` from :data:`ERROR_CODES` and one sentence for a person."""

    code: str
    message: str
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.code not in ERROR_CODES:
            raise ValueError(f"unknown error code {self.code!r}")
        self.message = sentence(self.message)
        super().__init__(self.message)

    @property
    def status(self) -> int:
        return ERROR_CODES[self.code][0]


def error_body(code: str, message: str) -> dict[str, Any]:
    """``{"error": {"code", "message"}}``: the one shape of every error the API returns."""
    return {"error": {"code": code, "message": sentence(message)}}


def image_error(message: str, dicom: bool) -> ApiError:
    """The 422 for a film the core's image path refused. For a DICOM file the library's own words in brackets are
    dropped: they come from a parser that has read the patient tags, and no tag may reach an answer or a log."""
    if dicom:
        message = re.sub(r"\s*\([^()]*(\([^()]*\)[^()]*)*\)", "", message)
    return ApiError("bad_image", message)
