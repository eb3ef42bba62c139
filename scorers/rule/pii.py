"""``pii``: personal data in a step's text: e-mail addresses, phone numbers (``phonenumbers``, in
a default region for numbers written without a country code), payment card numbers (13-19 digits
that pass the Luhn check, ``stdnum.luhn``) and IBANs (checksum verified, ``stdnum.iban``).

It passes when none of the asked-for kinds is found. A failure reports each finding's kind and
position with the value masked (``j***@e***.com``, ``************1111``), never the value itself::

    >>> from scorers.rule.pii import find_pii
    >>> [(f.kind, f.start, f.masked) for f in find_pii("mail jane.doe@example.com, card 4111 1111 1111 1111")]
    [('email', 5, 'j***@e***.com'), ('card', 32, '************1111')]
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import phonenumbers
from pydantic import Field, field_validator
from stdnum import iban, luhn

from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, as_text, get_field
from ..registry import register
from .common import FIELD, verdict

__all__ = ["PII_KINDS", "Finding", "Pii", "find_pii"]

PiiKind = Literal["email", "phone", "card", "iban"]
PII_KINDS: tuple[PiiKind, ...] = ("email", "phone", "card", "iban")

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,63}\b")
# 13-19 digits, optionally grouped by single spaces or hyphens
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
# country code, check digits, then 11-30 letters or digits, optionally grouped by single spaces
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
_MAX_FINDINGS = 50


@dataclass(frozen=True, slots=True)
class Finding:
    kind: PiiKind
    start: int
    end: int
    masked: str

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": self.start, "end": self.end, "masked": self.masked}


def _mask_email(value: str) -> str:
    local, _, domain = value.partition("@")
    host, _, tld = domain.rpartition(".")
    return f"{local[:1]}***@{host[:1]}***.{tld}"


def _mask_digits(value: str, keep: int) -> str:
    digits = [c for c in value if c.isalnum()]
    return "*" * max(len(digits) - keep, 0) + "".join(digits[-keep:])


def _mask_iban(value: str) -> str:
    compact = iban.compact(value)
    return compact[:2] + "*" * (len(compact) - 6) + compact[-4:]


def _iban_end(candidate: str) -> int | None:
    """Where the longest valid IBAN at the start of the candidate ends (the pattern may also have
    taken a following word, as in ``DE89 3704 0044 0532 0130 00 EUR``), or None."""
    ends = [i + 1 for i, c in enumerate(candidate) if c != " "]
    for length in range(len(ends), 14, -1):
        if iban.is_valid(candidate[: ends[length - 1]]):
            return ends[length - 1]
    return None


def _overlaps(start: int, end: int, taken: list[tuple[int, int]]) -> bool:
    return any(start < e and s < end for s, e in taken)


def find_pii(text: str, *, kinds: Collection[str] = PII_KINDS, region: str = "US") -> list[Finding]:
    """Every finding of the given kinds, in text order. IBANs and cards are found first, so that
    their digits are not reported again as phone numbers."""
    found: list[Finding] = []
    taken: list[tuple[int, int]] = []
    if "iban" in kinds:
        for m in _IBAN.finditer(text):
            end = _iban_end(m.group(0))
            if end is not None:
                value = m.group(0)[:end]
                found.append(Finding("iban", m.start(), m.start() + end, _mask_iban(value)))
                taken.append((m.start(), m.start() + end))
    if "card" in kinds:
        for m in _CARD.finditer(text):
            digits = re.sub(r"\D", "", m.group(0))
            if 13 <= len(digits) <= 19 and not _overlaps(*m.span(), taken) and luhn.is_valid(digits):
                found.append(Finding("card", m.start(), m.end(), _mask_digits(digits, 4)))
                taken.append(m.span())
    if "email" in kinds:
        for m in _EMAIL.finditer(text):
            found.append(Finding("email", m.start(), m.end(), _mask_email(m.group(0))))
            taken.append(m.span())
    if "phone" in kinds:
        for pm in phonenumbers.PhoneNumberMatcher(text, region, leniency=phonenumbers.Leniency.VALID):
            if not _overlaps(pm.start, pm.end, taken):
                found.append(Finding("phone", pm.start, pm.end, _mask_digits(pm.raw_string, 2)))
    return sorted(found, key=lambda f: f.start)


@register
class Pii(BaseScorer):
    """The field's text holds no personal data of the given kinds (e-mail, phone, card, IBAN).
    Findings are reported by kind and position, masked."""

    name = "pii"
    example: ClassVar[dict[str, Any]] = {
        "name": "reply_no_pii",
        "target": {"step": "draft_reply"},
        "params": {"kinds": ["email", "phone", "card", "iban"], "region": "DE"},
        "on_fail": "review",
    }
    field: StepPath = FIELD
    kinds: list[PiiKind] = Field(
        default_factory=lambda: list(PII_KINDS), min_length=1, description="Which kinds of personal data to look for."
    )
    region: str = Field(
        default="US", description="Region (ISO 3166 code) for phone numbers written without a country code."
    )

    @field_validator("region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        upper = value.upper()
        if upper not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"{value!r} is not a region phonenumbers knows (use an ISO 3166 code such as 'US', 'DE')")
        return upper

    async def score(self, step: StepPublic) -> Score:
        text = as_text(get_field(step, self.field))
        findings = find_pii(text, kinds=self.kinds, region=self.region)
        if not findings:
            return verdict(True, found=[])
        counts: dict[str, int] = {}
        for f in findings:
            counts[f.kind] = counts.get(f.kind, 0) + 1
        shown = findings[:5]
        listed = ", ".join(f"{f.kind} at {f.start} ({f.masked})" for f in shown)
        more = f" and {len(findings) - len(shown)} more" if len(findings) > len(shown) else ""
        return verdict(
            False,
            f"{self.field} holds personal data: {listed}{more}",
            counts=counts,
            found=[f.as_dict() for f in findings[:_MAX_FINDINGS]],
        )
