"""Upload forms, read only once the caller is known, into spooled files.

FastAPI parses a route's `File`/`Form` parameters before its dependencies run, so with them
an anonymous client could make the gateway read a whole body (a gigabyte for a batch) before
its token was looked at. The upload routes therefore declare no body parameters: the token
is checked from the headers first, then `read_form` streams the body through Starlette's
multipart parser under the route's body limit (create_app). Each file part spools to a
temporary file (in memory up to 256 KiB, then on disk), so the form is never held whole.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from gateway.errors import ApiError
from gateway.schemas import NUL_REFUSAL, STORABLE

ID_MAX_LENGTH = 200  # module_id, cell_id (the columns' length)
MANIFEST_MAX_LENGTH = 1024 * 1024


class _SpoolingParser(MultiPartParser):
    # Starlette keeps each file in memory up to 1 MiB: 64 files of a batch would be 64 MiB.
    # Past this size a part goes to a temporary file on disk.
    spool_max_size = 256 * 1024

    complete = False

    def __init__(self, request: Request, *, file_field: str, max_files: int, max_fields: int):
        super().__init__(
            request.headers, request.stream(), max_files=max_files, max_fields=max_fields
        )
        self.file_field = file_field.encode()

    def on_headers_finished(self) -> None:
        # RFC 7578 makes a file part's filename optional, and clients leave it out (a Buffer
        # through Node's form-data, hand-built bodies); Starlette would then read the image
        # as a text field. A part under the file field's name is a file either way, unnamed.
        part = self._current_part
        _disposition, options = parse_options_header(part.content_disposition)
        unnamed = options.get(b"name") == self.file_field and b"filename" not in options
        if unnamed:
            part.content_disposition = (part.content_disposition or b"") + b'; filename=""'
        super().on_headers_finished()
        if unnamed and part.file is not None:
            part.file.filename = None

    def on_end(self) -> None:
        # python-multipart calls this only on the closing boundary: a body cut short (a client
        # or proxy dropping the connection) would otherwise parse as the parts before the cut.
        self.complete = True

    def on_part_end(self) -> None:
        # Starlette decodes a text field that is not valid in the form's charset as Latin-1,
        # which would store "M-\xff" as "M-ÿ": refuse it instead.
        part = self._current_part
        if part.file is None:
            try:
                part.data.decode(self._charset)
            except UnicodeDecodeError:
                raise MultiPartException(
                    f"the field {part.field_name!r} is not valid {self._charset} text"
                ) from None
            except LookupError:
                raise MultiPartException(f"unknown charset {self._charset!r}") from None
        super().on_part_end()


def invalid(message: str) -> ApiError:
    return ApiError(422, "validation_error", message)


def refuse_nul(name: str, value: str) -> None:
    if "\x00" in value:
        raise invalid(f"{name}: {NUL_REFUSAL}")


@dataclass
class UploadForm:
    """A parsed form: text fields by name (repeats kept in order) and every file part."""

    form: FormData

    def files(self, name: str) -> list[UploadFile]:
        """The file parts under `name` (read_form's `file_field`: all of its parts)."""
        return [part for part in self.form.getlist(name) if isinstance(part, UploadFile)]

    def texts(self, name: str, *, max_length: int = ID_MAX_LENGTH) -> list[str]:
        values = self.form.getlist(name)
        texts = [value for value in values if isinstance(value, str)]
        if len(texts) != len(values):
            raise invalid(f"{name}: expected a text field, got a file part")
        for value in texts:
            if len(value) > max_length:
                raise invalid(f"{name}: at most {max_length} characters, got {len(value)}")
            refuse_nul(name, value)
        return texts

    def text(self, name: str, *, max_length: int = ID_MAX_LENGTH) -> str | None:
        texts = self.texts(name, max_length=max_length)
        if len(texts) > 1:
            raise invalid(f"{name}: given {len(texts)} times; send it once")
        return texts[0] if texts else None

    async def close(self) -> None:
        await self.form.close()


async def read_form(
    request: Request,
    *,
    file_field: str,
    max_files: int,
    max_fields: int,
    too_many_files: ApiError,
) -> UploadForm:
    """Parse the request's multipart (or urlencoded) body; a body over its limit is a 413.

    Parts named `file_field` are files, with a filename or without. A file part past
    `max_files` raises `too_many_files` as soon as its headers are parsed: the rest of the
    body is never read.
    """
    content_type, _params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data":
        # No file can come any other way: the route then says which field is missing.
        return UploadForm(FormData())
    parser = _SpoolingParser(
        request, file_field=file_field, max_files=max_files, max_fields=max_fields
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        if str(exc).startswith("Too many files"):  # Starlette's wording for max_files
            raise too_many_files from None
        message = f"the multipart body cannot be parsed: {exc.message}"
        raise ApiError(400, "bad_request", message) from None
    if not parser.complete:
        await form.close()
        raise ApiError(
            400,
            "bad_request",
            "the multipart body ended before its closing boundary (cut short or empty); "
            "nothing was accepted",
        )
    return UploadForm(form)


class ManifestEntry(BaseModel):
    """What one file of a batch is: the batch's `manifest` field is a JSON list of these."""

    model_config = ConfigDict(extra="forbid")

    module_id: Annotated[str, Field(max_length=ID_MAX_LENGTH), STORABLE] | None = None
    cell_id: Annotated[str, Field(max_length=ID_MAX_LENGTH), STORABLE] | None = None


_MANIFEST = TypeAdapter(list[ManifestEntry])


def _per_file(form: UploadForm, name: str, count: int) -> Sequence[str | None]:
    values = form.texts(name)
    if not values:
        return [None] * count
    if len(values) == 1:
        return values * count  # one value names every file, as a batch of one module does
    if len(values) != count:
        raise invalid(
            f"{name}: given {len(values)} times for {count} files; send it once (for every "
            "file) or once per file, in file order"
        )
    return values


def batch_ids(form: UploadForm, count: int) -> list[tuple[str | None, str | None]]:
    """(module_id, cell_id) per file, from repeated fields and/or the JSON `manifest`.

    A manifest entry's value wins over the fields for its file; a key it leaves out (or sets
    to null) falls back to the fields.
    """
    module_ids = _per_file(form, "module_id", count)
    cell_ids = _per_file(form, "cell_id", count)
    raw = form.text("manifest", max_length=MANIFEST_MAX_LENGTH)
    if raw is None:
        return list(zip(module_ids, cell_ids, strict=True))
    try:
        manifest = _MANIFEST.validate_python(json.loads(raw))
    except ValidationError as exc:
        first = exc.errors()[0]
        # (0, "cell_id") -> manifest[0].cell_id; () (not a list at all) -> manifest
        where = "".join(
            f"[{part}]" if isinstance(part, int) else f".{part}" for part in first["loc"]
        )
        raise invalid(f"manifest{where}: {first['msg']}") from None
    except (ValueError, RecursionError) as exc:  # not JSON at all, or nested past Python's stack
        raise invalid(
            f"manifest: expected a JSON list of {{'module_id', 'cell_id'}} objects ({exc})"
        ) from None
    if len(manifest) != count:
        raise invalid(f"manifest: {len(manifest)} entries for {count} files; one per file")
    return [
        (entry.module_id or module_id, entry.cell_id or cell_id)
        for entry, module_id, cell_id in zip(manifest, module_ids, cell_ids, strict=True)
    ]
