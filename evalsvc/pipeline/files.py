"""Read record files for ``evalsvc ingest``: a JSON array (streamed with ijson), JSON lines, or
one JSON document for connectors whose payloads are whole documents.

Items come out in chunks, with the byte position for a progress bar::

    >>> from evalsvc.pipeline.files import iter_chunks  # doctest: +SKIP
    >>> for offset, items, pos in iter_chunks(path, chunk_size=5000): ...  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import ijson
import orjson

from evalsvc.errors import InvalidInput

__all__ = ["iter_chunks", "read_document"]


def _first_char(fh: IO[bytes]) -> bytes:
    while True:
        c = fh.read(1)
        if not c or not c.isspace():
            fh.seek(0)
            return c


def iter_chunks(path: Path, *, chunk_size: int) -> Iterator[tuple[int, list[Any], int]]:
    """Yield ``(index of the first item, items, bytes read so far)``."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="file") from None
    with fh:
        first = _first_char(fh)
        if not first:
            raise InvalidInput(f"{path} is empty", field="file")
        if first == b"[":
            yield from _array_chunks(fh, path, chunk_size)
        else:
            yield from _line_chunks(fh, path, chunk_size)


def _array_chunks(fh: IO[bytes], path: Path, chunk_size: int) -> Iterator[tuple[int, list[Any], int]]:
    batch: list[Any] = []
    index = 0
    try:
        for item in ijson.items(fh, "item", use_float=True):
            batch.append(item)
            if len(batch) >= chunk_size:
                yield index, batch, fh.tell()
                index += len(batch)
                batch = []
    except ijson.JSONError as exc:
        raise InvalidInput(
            f"{path}: not a valid JSON array after item {index + len(batch)}: {exc}",
            field=f"file.item.{index + len(batch)}",
        ) from None
    if batch:
        yield index, batch, fh.tell()


def _line_chunks(fh: IO[bytes], path: Path, chunk_size: int) -> Iterator[tuple[int, list[Any], int]]:
    batch: list[Any] = []
    index = 0
    pos = 0
    for lineno, line in enumerate(fh, start=1):
        pos += len(line)
        if not line.strip():
            continue
        try:
            batch.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            if lineno == 1 and line.lstrip().startswith(b"{"):
                # one (pretty-printed) JSON document rather than JSON lines
                fh.seek(0)
                doc = read_document(fh.read(), path)
                items = doc if isinstance(doc, list) else [doc]
                yield 0, items, fh.tell()
                return
            raise InvalidInput(f"{path} line {lineno} is not JSON: {exc}", field=f"file.line.{lineno}") from None
        if len(batch) >= chunk_size:
            yield index, batch, pos
            index += len(batch)
            batch = []
    if batch:
        yield index, batch, pos


def read_document(data: bytes, path: Path) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"{path} is not valid JSON: {exc}", field="file") from None
