"""Reading an upload into memory (never to disk): the size limit while the body streams in, raw bytes or one multipart file."""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.multipart import MultipartParser, parse_options_header

from core.serving.errors import ApiError

__all__ = ["Upload", "read_body", "parse_upload", "RAW_TYPES", "OPENAPI_BODY"]

RAW_TYPES = ("image/", "application/dicom", "application/octet-stream")  # raw bodies taken as film bytes
_BINARY = {"schema": {"type": "string", "format": "binary"}}
OPENAPI_BODY = {"requestBody": {"required": True, "description": "One film: JPEG, PNG or DICOM, as a multipart "
                                "field `file` or as the raw body.", "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["file"],
                                       "properties": {"file": {"type": "string", "format": "binary"}}}},
    "image/jpeg": _BINARY, "image/png": _BINARY, "application/dicom": _BINARY, "application/octet-stream": _BINARY}}}


@dataclass(frozen=True)
class Upload:
    """A film's bytes and what the decoder needs to know of its name (only whether it is DICOM: names are not kept)."""

    data: bytes
    dicom: bool

    @property
    def filename(self) -> str:
        return "upload.dcm" if self.dicom else ""


async def read_body(chunks: AsyncIterator[bytes], declared: str | None, limit: int) -> bytes:
    """The whole body, in memory; 413 as soon as it is over ``limit`` bytes, declared or counted as it streams in
    (the server discards the rest of an over-limit body after answering, so the client still reads its 413)."""
    too_large = ApiError("too_large", f"the upload is over the limit of {limit / 1024 / 1024:g} MB")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise too_large
        except ValueError:
            raise ApiError("bad_request", "the Content-Length header is not a number") from None
    parts: list[bytes] = []
    size = 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def _multipart_file(body: bytes, boundary: bytes) -> Upload:
    """The part named ``file`` (else the first part with a file name) of a multipart body, parsed in memory."""
    parts: list[dict] = []
    header: dict[str, bytearray] = {}

    def begin() -> None:
        parts.append({"headers": {}, "data": bytearray()})

    def header_field(data: bytes, start: int, end: int) -> None:
        header.setdefault("field", bytearray()).extend(data[start:end])

    def header_value(data: bytes, start: int, end: int) -> None:
        header.setdefault("value", bytearray()).extend(data[start:end])

    def header_end() -> None:
        parts[-1]["headers"][bytes(header.get("field", b"")).lower()] = bytes(header.get("value", b""))
        header.clear()

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1]["data"].extend(data[start:end])

    parser = MultipartParser(boundary, {"on_part_begin": begin, "on_header_field": header_field,
                                        "on_header_value": header_value, "on_header_end": header_end,
                                        "on_part_data": part_data})
    try:
        parser.write(body)
        parser.finalize()
    except Exception:  # noqa: BLE001 - python-multipart raises its own and ValueError for a broken body
        raise ApiError("bad_request", "the multipart body cannot be parsed") from None
    chosen = None
    for part in parts:
        _, options = parse_options_header(part["headers"].get(b"content-disposition", b""))
        if options.get(b"name") == b"file" or (chosen is None and b"filename" in options):
            chosen = (part, options)
            if options.get(b"name") == b"file":
                break
    if chosen is None:
        raise ApiError("bad_request", "the multipart form has no field named file")
    part, options = chosen
    kind, _ = parse_options_header(part["headers"].get(b"content-type", b""))
    dicom = kind == b"application/dicom" or options.get(b"filename", b"").lower().endswith(b".dcm")
    return Upload(bytes(part["data"]), dicom)


def parse_upload(content_type: str | None, body: bytes) -> Upload:
    """The film in a request: the ``file`` part of a multipart form, or the raw body (JPEG, PNG, DICOM, octet-stream)."""
    kind, options = parse_options_header(content_type or "application/octet-stream")
    kind_text = kind.decode("latin-1").lower()
    if kind_text == "multipart/form-data":
        if not options.get(b"boundary"):
            raise ApiError("bad_request", "the multipart Content-Type has no boundary")
        return _multipart_file(body, options[b"boundary"])
    if not kind_text.startswith(RAW_TYPES):
        raise ApiError("unsupported_media_type", f"a body of type {kind_text[:60]} is not taken; send a film as "
                       "multipart/form-data (field file) or as image/jpeg, image/png or application/dicom")
    return Upload(body, kind_text == "application/dicom")
