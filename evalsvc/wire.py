"""The fast lane of JSON ingest: step records decoded and checked by msgspec, straight from the
request body, with the same fields and limits as :class:`evalsvc.schemas.StepRecord`.

Decoding a record into Python objects and validating it with pydantic cost about three times the
SQLite insert of its row (bench/README.md). Here the body is split into its records without
decoding them (``list[msgspec.Raw]``), and each record is decoded and checked into a
:class:`WireRecord` in C, in one pass.

The lane only ever *accepts* what ``StepRecord`` accepts, with the same values. Anything it does
not take as it is (a record msgspec rejects, one with an ``error``, a reserved step key, an end
before the start, an integer past 64 bits, a record near the size limit) goes the usual way
(pydantic), which gives the answer and the message naming the field. ``tests/test_wire.py`` checks
that the two ways agree.

    >>> import msgspec
    >>> rec = decode_record(msgspec.Raw(b'{"run_key": "r1", "step_key": "a", "output": {"x": 1}}'))
    >>> (rec.source, rec.run_key, rec.attempt, rec.output)
    ('json', 'r1', 1, {'x': 1})
    >>> sorted(record_partial(rec))
    ['attributes', 'output', 'status']
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType
from pydantic import TypeAdapter, ValidationError

from evalsvc.schemas import MAX_TOKENS, RUN_STEP_KEY, RunStatus, StepStatus
from evalsvc.times import as_utc

__all__ = ["WireRecord", "decode_record", "record_partial", "split_array"]

# the limits of StepRecord's fields (evalsvc/schemas.py); \Z, not $: Python's $ also matches
# before a final newline, pydantic's does not
_Source = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"\A[A-Za-z0-9_.:-]+\Z")]
_Key = Annotated[str, Meta(min_length=1, max_length=256)]
_Text256 = Annotated[str, Meta(max_length=256)]
_Kind = Annotated[str, Meta(min_length=1, max_length=64)]
_Count = Annotated[int, Meta(ge=0, le=MAX_TOKENS)]


class WireRecord(msgspec.Struct, forbid_unknown_fields=True):
    """A step record as the JSON connector's fast lane decodes it (see the module's doc)."""

    run_key: _Key
    step_key: _Key
    source: _Source = "json"  # the JSON connector's default source
    attempt: Annotated[int, Meta(ge=1, le=10_000)] = 1
    name: _Text256 | None = None
    kind: _Kind | UnsetType = UNSET  # given or not matters to merging (StepRecord.model_fields_set)
    status: StepStatus | None = None
    # any JSON value here, parsed by pydantic's own datetime parser (decode_record): msgspec's
    # rounds digits past the microsecond where pydantic truncates them, and takes other formats
    started_at: Any = None
    ended_at: Any = None
    input: Any = None
    output: Any = None
    expected: Any = None
    error: Any = None  # a record with an error goes the usual way (StepError normalises it)
    parent_step_key: _Text256 | None = None
    model: _Text256 | None = None
    input_tokens: _Count | None = None
    output_tokens: _Count | None = None
    cost_usd: Annotated[float, Meta(ge=0)] | None = None
    attributes: dict[str, Any] = {}
    workflow: _Text256 | None = None
    run_status: RunStatus | None = None
    run_attributes: dict[str, Any] = {}


_split = msgspec.json.Decoder(list[Raw])
_decode = msgspec.json.Decoder(WireRecord)
_pydantic_timestamp = TypeAdapter(datetime).validator.validate_python
# the usual shape (RFC 3339, at most microseconds, Z or an offset), which datetime.fromisoformat
# reads to the same value as pydantic, ten times faster; any other value goes to pydantic's parser
_RFC3339 = re.compile(r"\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)?", re.ASCII)


def _timestamp(value: Any) -> datetime:
    if type(value) is str:
        # the commonest shape, UTC with "Z" and 0-6 decimals, known by its punctuation (the digits
        # fromisoformat checks): no regex, and the value comes with datetime.UTC, as as_utc makes it
        n = len(value)
        if (
            (n == 20 or 22 <= n <= 27)
            and value[-1] == "Z"
            and value[10] == "T"
            and (n == 20 or value[19] == ".")
            and value[4] == value[7] == "-"
            and value[13] == value[16] == ":"
            and value.isascii()
        ):
            try:
                return datetime.fromisoformat(value)
            except ValueError:
                pass
        elif _RFC3339.fullmatch(value):
            try:
                return as_utc(datetime.fromisoformat(value))
            except ValueError:  # e.g. hour 24, month 13: pydantic words the error
                pass
    parsed: datetime = _pydantic_timestamp(value)
    return as_utc(parsed)


def split_array(body: bytes) -> list[Raw]:
    """The items of a JSON array, each as its own JSON text (raises ``msgspec.DecodeError``)."""
    return _split.decode(body)


# digits as zeros: a run of 19 may be a number that orjson, the usual way's decoder, reads
# differently (an integer past 64 bits becomes a float there; msgspec keeps it whole)
_DIGITS_AS_ZEROS = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER = b"0" * 19


def decode_record(raw: Raw) -> WireRecord | None:
    """The record, or None when it must go the usual (pydantic) way."""
    try:
        rec = _decode.decode(raw)
    except msgspec.DecodeError:  # includes ValidationError: pydantic names the field
        return None
    # 19 digits in a row, in a string or not: look for an integer past 64 bits in the values
    if _LONG_NUMBER in bytes(raw).translate(_DIGITS_AS_ZEROS) and any(map(_has_big_int, msgspec.structs.astuple(rec))):
        return None
    if rec.error is not None or rec.step_key == RUN_STEP_KEY:
        return None  # an error object is normalised by StepError; a reserved key gets pydantic's message
    try:
        if rec.started_at is not None:
            rec.started_at = _timestamp(rec.started_at)
        if rec.ended_at is not None:
            rec.ended_at = _timestamp(rec.ended_at)
    except ValidationError:
        return None
    if rec.started_at is not None and rec.ended_at is not None and rec.ended_at < rec.started_at:
        return None
    return rec


_INT64 = range(-(2**63), 2**64)  # what orjson reads as an integer


def _has_big_int(value: Any) -> bool:
    if type(value) is int:
        return value not in _INT64
    if type(value) is dict:
        return any(map(_has_big_int, value.values()))
    if type(value) is list:
        return any(map(_has_big_int, value))
    return False


def record_partial(rec: WireRecord) -> dict[str, Any]:
    """What ``evalsvc.pipeline.ingest`` merges and stores of a record, as it takes it from a
    ``StepRecord``: the fields it gives (not None), the filled-in status, the attributes."""
    out: dict[str, Any] = {}
    if rec.name is not None:
        out["name"] = rec.name
    if rec.kind is not UNSET:
        out["kind"] = rec.kind
    if rec.started_at is not None:
        out["started_at"] = rec.started_at
    if rec.ended_at is not None:
        out["ended_at"] = rec.ended_at
    if rec.input is not None:
        out["input"] = rec.input
    if rec.output is not None:
        out["output"] = rec.output
    if rec.expected is not None:
        out["expected"] = rec.expected
    if rec.parent_step_key is not None:
        out["parent_step_key"] = rec.parent_step_key
    if rec.model is not None:
        out["model"] = rec.model
    if rec.input_tokens is not None:
        out["input_tokens"] = rec.input_tokens
    if rec.output_tokens is not None:
        out["output_tokens"] = rec.output_tokens
    if rec.cost_usd is not None:
        out["cost_usd"] = rec.cost_usd
    status = rec.status
    if status is None:  # StepRecord._fill (a record with an error never comes this way)
        status = StepStatus.completed if rec.ended_at is not None or rec.output is not None else StepStatus.running
    out["status"] = status.value
    out["attributes"] = rec.attributes
    return out
