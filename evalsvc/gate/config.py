"""The gate's part of ``evalsvc.yaml``: the same file as production, with an optional ``gate:`` block.

The evaluators are the ones production runs (their versions are the same hashes); ``gate:`` only
says how to decide (it is not part of any evaluator's version)::

    gate:
      alpha: 0.05            # one-sided level of each test; Holm across evaluators
      power: 0.8             # the power check: PASS needs a minimum detectable effect within the margin
      margin: 0.02           # default non-inferiority margin (2 points)
      min_items: 20
      max_error_rate: 0.05   # more scorer errors than this: exit 3
      must_pass: [q-017, q-042]
      evaluators:
        safety: {floor: 0.99, compare: false}       # only the floor decides
        helpfulness: {metric: score, repeats: 3}   # mean score; judge noise from 3 judge calls

    >>> specs, gate = parse_gate_config("evaluators: [{name: a, scorer: not_empty}]\\ngate: {margin: 0.03}")
    >>> gate.margin_of("a"), gate.alpha
    (0.03, 0.05)
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from evalsvc.errors import InvalidInput
from evalsvc.pipeline.evaluators import parse_config
from evalsvc.schemas import EvaluatorSpec

__all__ = ["EvaluatorGate", "GateConfig", "load_gate_config", "parse_gate_config"]


class EvaluatorGate(BaseModel):
    """How the gate decides one evaluator."""

    model_config = ConfigDict(extra="forbid")
    margin: float | None = Field(default=None, ge=0, le=1, description="Non-inferiority margin (fraction).")
    floor: float | None = Field(default=None, ge=0, le=1, description="The candidate's rate must be at least this.")
    metric: Literal["pass_rate", "score"] = Field(default="pass_rate", description="What is compared.")
    repeats: int = Field(default=1, ge=1, le=20, description="Judge calls per item (LLM judges): judge noise.")
    compare: bool = Field(default=True, description="false: no paired comparison; only the floor decides.")


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    power: float = Field(default=0.8, gt=0.5, lt=1)
    margin: float = Field(default=0.02, ge=0, le=1)
    min_items: int = Field(default=20, ge=1)
    max_error_rate: float = Field(default=0.05, ge=0, le=1)
    resamples: int = Field(default=2000, ge=100, le=100_000)
    seed: int = Field(default=0, ge=0)
    must_pass: list[str] = Field(default_factory=list)
    evaluators: dict[str, EvaluatorGate] = Field(default_factory=dict)

    def of(self, name: str) -> EvaluatorGate:
        return self.evaluators.get(name) or EvaluatorGate()

    def margin_of(self, name: str) -> float:
        margin = self.of(name).margin
        return self.margin if margin is None else margin


def parse_gate_config(text: str, *, source: str = "evalsvc.yaml") -> tuple[list[EvaluatorSpec], GateConfig]:
    specs = parse_config(text, source=source)
    data = yaml.safe_load(text)
    raw = data.get("gate") or {}
    try:
        gate = GateConfig.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in ("gate", *err["loc"]))
        raise InvalidInput(f"{source}: {err['msg']}", field=loc) from None
    names = {s.name for s in specs}
    for name in gate.evaluators:
        if name not in names:
            raise InvalidInput(f"{source}: gate settings for {name!r}, which is not an evaluator of the file",
                               field=f"gate.evaluators.{name}")  # fmt: skip
    return specs, gate


def load_gate_config(path: Path) -> tuple[list[EvaluatorSpec], GateConfig]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"cannot read {path}: {exc.strerror}", field="config") from None
    return parse_gate_config(text, source=str(path))
