"""The LLM judge: one scorer (``llm_judge``) that runs any judge template through litellm.

Configuration is the evaluator's ``params`` (validated when ``evalsvc.yaml`` is applied): a
``model`` (any litellm model string; ``api_base`` for a self-hosted server), a built-in
``template`` or an inline ``prompt`` with ``choices`` or ``scale``, and call settings (timeout,
retries with backoff on 429 and 5xx, temperature, per-token prices). The verdict is parsed from
structured output (a JSON object, by ``response_format`` or a tool call); anything else raises
:class:`~evalsvc.errors.UnrecoverableError`, which the scoring loop records as an ``error``::

    >>> from scorers.registry import create
    >>> judge = create("llm_judge", {"model": "openai/judge", "template": "toxicity",
    ...                              "api_base": "http://127.0.0.1:9/v1"})
    >>> judge.template_obj().labels()
    ['safe', 'toxic']

The pipeline splits :meth:`LLMJudge.score` in two: :meth:`LLMJudge.prepare` renders the prompt and
its cache key (no I/O), :meth:`LLMJudge.complete` makes the call; between the two it looks the key
up in the verdict cache and checks the budgets.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import threading
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Literal

import orjson
from pydantic import Field, PrivateAttr, model_validator

from evalsvc.errors import RetryableError, UnrecoverableError
from evalsvc.schemas import Score, StepPublic

from ..base import BaseScorer, StepPath, get_field
from ..registry import register
from .templates import SYSTEM_PROMPT, JudgeTemplate, Scale, load_template

__all__ = ["JudgeCall", "LLMJudge", "parse_verdict"]


@dataclass(frozen=True, slots=True)
class JudgeCall:
    """A rendered judge request: what is sent, and the verdict cache's key for it."""

    messages: list[dict[str, str]]
    cache_key: str
    template_version: str


@register
class LLMJudge(BaseScorer):
    """An LLM grades the step with a judge template (built-in or inline)."""

    name: ClassVar[str] = "llm_judge"
    version: ClassVar[str] = "1"
    kind: ClassVar[Literal["rule", "statistical", "llm"]] = "llm"
    example: ClassVar[dict[str, Any]] = {
        "name": "grounded_answer",
        "target": {"step": "answer"},
        "params": {"model": "openai/gpt-4o-mini", "template": "faithfulness", "fields": {"context": "input.documents"}},
        "sample": {"rate": 0.05, "always": ["step_failed", "rule_failed"], "stratify": ["name", "model"]},
        "budget": {"calls_per_day": 5000, "usd_per_day": 10},
    }

    model: str = Field(min_length=1, max_length=256, description="litellm model string, e.g. openai/gpt-4o-mini.")
    template: str | None = Field(default=None, description="A built-in template: faithfulness, correctness, ...")
    prompt: str | None = Field(default=None, description="An inline prompt (Jinja2), instead of a template.")
    choices: dict[str, float] | None = Field(default=None, description="Inline prompt: label -> score, best first.")
    scale: Scale | None = Field(default=None, description="Inline prompt: a numeric scale {min, max}.")
    criteria: str | None = Field(default=None, max_length=20_000, description="The rubric (template rubric).")
    fields: dict[str, StepPath] = Field(
        default_factory=dict, description="Where to read variables, e.g. context: input.docs"
    )
    api_base: str | None = Field(default=None, description="Base URL of an OpenAI-compatible server.")
    api_key_env: str | None = Field(default=None, description="Environment variable that holds the API key.")
    temperature: float = Field(default=0.0, ge=0, le=2)
    max_tokens: int = Field(default=512, ge=16, le=8192)
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per attempt.")
    max_retries: int = Field(default=3, ge=0, le=10, description="Retries after a 429, a 5xx, or a timeout.")
    retry_backoff: float = Field(default=1.0, ge=0, le=60, description="First backoff in seconds, doubled each retry.")
    output: Literal["json_schema", "json", "tool"] = Field(
        default="json_schema", description="json_schema: response_format with the schema; json: JSON mode; tool."
    )
    input_cost_per_token: float | None = Field(default=None, ge=0, description="USD; else litellm's price map, or 0.")
    output_cost_per_token: float | None = Field(default=None, ge=0)

    _calls: int = PrivateAttr(default=0)

    @model_validator(mode="after")
    def _check(self) -> LLMJudge:
        if (self.template is None) == (self.prompt is None):
            raise ValueError("give exactly one of template and prompt")
        if self.template is not None and (self.choices is not None or self.scale is not None):
            raise ValueError("choices and scale go with an inline prompt; a template has its own")
        if self.api_key_env is not None and not re.fullmatch(r"[A-Z_][A-Z0-9_]*", self.api_key_env):
            raise ValueError("api_key_env must name an environment variable (A-Z, 0-9, _)")
        tpl = self.template_obj()  # raises ValueError: unknown template, bad prompt
        if tpl.needs_criteria and not self.criteria:
            raise ValueError(f"template {tpl.name!r} needs the criteria parameter (the rubric)")
        return self

    def template_obj(self) -> JudgeTemplate:
        return self._template

    @cached_property
    def _template(self) -> JudgeTemplate:
        if self.template is not None:
            tpl = load_template(self.template)
            if self.fields:
                tpl = tpl.model_copy(update={"fields": {**tpl.fields, **self.fields}})
                JudgeTemplate.model_validate(tpl.model_dump())
            return tpl
        fields = self.fields or {"input": "input", "output": "output", "expected": "expected"}
        digest = hashlib.sha256(
            orjson.dumps(
                [self.prompt, self.choices, self.scale and self.scale.model_dump()], option=orjson.OPT_SORT_KEYS
            )
        ).hexdigest()[:12]
        return JudgeTemplate(
            name="inline",
            version=digest,
            prompt=self.prompt or "",
            choice_scores=self.choices,
            scale=self.scale,
            fields=fields,
            requires=["output"] if "output" in fields else [],
        )

    # ---- the two halves of score() ------------------------------------------------------------
    def prepare(self, step: StepPublic) -> JudgeCall | Score:
        """The request for this step, or a skip (a field the template needs is missing)."""
        tpl = self._template
        values = {var: get_field(step, path) for var, path in tpl.fields.items()}
        missing = [var for var in tpl.requires if values.get(var) in (None, "", [], {})]
        if missing:
            return Score(explanation=f"nothing to judge: the step has no {', '.join(missing)}")
        user = tpl.render(values, criteria=self.criteria)
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]
        version = f"{tpl.name}@{tpl.version}"
        key = hashlib.sha256(orjson.dumps([self.model, version, self.output, messages])).hexdigest()
        return JudgeCall(messages=messages, cache_key=key, template_version=version)

    async def complete(self, call: JudgeCall) -> Score:
        """Call the model (with retries) and parse its verdict.

        The calls run on one long-lived event loop of their own (a daemon thread): litellm keeps
        HTTP clients and a logging worker bound to the loop they were made on, and the scoring loop
        runs each chunk in a fresh ``asyncio.run``."""
        future = asyncio.run_coroutine_threadsafe(self._call(call), _judge_loop())
        return await asyncio.wrap_future(future)

    async def _call(self, call: JudgeCall) -> Score:
        import litellm

        litellm.suppress_debug_info = True
        kwargs = self._request(call)
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await litellm.acompletion(**kwargs)
                break
            except Exception as exc:
                retryable, why = _classify(exc)
                if not retryable:
                    raise UnrecoverableError(f"judge call failed: {why}") from None
                if attempt > self.max_retries:
                    raise RetryableError(f"judge call failed after {attempt} attempts: {why}") from None
                await asyncio.sleep(_backoff(exc, self.retry_backoff, attempt))
        return self._verdict(response, call, attempts=attempt)

    async def score(self, step: StepPublic) -> Score:
        prepared = self.prepare(step)
        if isinstance(prepared, Score):
            return prepared
        return await self.complete(prepared)

    # ---- helpers ------------------------------------------------------------------------------
    def _request(self, call: JudgeCall) -> dict[str, Any]:
        tpl = self._template
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": call.messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "timeout": self.timeout,
            "max_retries": 0,  # the retries are ours, with backoff
        }
        if self.api_base:
            kwargs["api_base"] = self.api_base
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            kwargs["api_key"] = key
        elif self.api_base and not self.api_key_env:
            kwargs["api_key"] = "not-needed"  # self-hosted servers usually take none
        schema = tpl.verdict_schema()
        if self.output == "json_schema":
            kwargs["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": schema, "strict": True},
            }
        elif self.output == "json":
            kwargs["response_format"] = {"type": "json_object"}
        else:
            kwargs["tools"] = [
                {"type": "function", "function": {"name": "record_verdict", "description": "Record the verdict.",
                                                  "parameters": schema}}
            ]  # fmt: skip
            kwargs["tool_choice"] = {"type": "function", "function": {"name": "record_verdict"}}
            # litellm routes calls with tools through its MCP bridge, which needs the optional
            # `mcp` package; a judge's tool is a plain function schema
            kwargs["_skip_mcp_handler"] = True
        return kwargs

    def _verdict(self, response: Any, call: JudgeCall, *, attempts: int) -> Score:
        usage = getattr(response, "usage", None)
        prompt_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        completion_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        cost = self._cost(response, prompt_tokens, completion_tokens)
        meta: dict[str, Any] = {
            "judge_model": self.model,
            "template": call.template_version,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "cost_usd": cost,
            "attempts": attempts,
            "cache_key": call.cache_key,
            "cache_hit": False,
        }
        try:
            message = response.choices[0].message
        except (AttributeError, IndexError):
            raise UnrecoverableError("unparseable verdict: the response has no message") from None
        tool_calls = getattr(message, "tool_calls", None) or []
        raw = tool_calls[0].function.arguments if tool_calls else getattr(message, "content", None)
        value, label, reasoning = parse_verdict(raw, self._template)
        meta["verdict"] = label
        return Score(value=value, label=label, explanation=reasoning, metadata=meta)

    def _cost(self, response: Any, prompt_tokens: int, completion_tokens: int) -> float:
        if self.input_cost_per_token is not None or self.output_cost_per_token is not None:
            return prompt_tokens * (self.input_cost_per_token or 0.0) + completion_tokens * (
                self.output_cost_per_token or 0.0
            )
        import litellm

        try:
            return float(litellm.completion_cost(completion_response=response) or 0.0)
        except Exception:  # a model litellm has no price for (self-hosted): free
            return 0.0


_LOOP: tuple[int, asyncio.AbstractEventLoop] | None = None
_LOOP_LOCK = threading.Lock()


def _judge_loop() -> asyncio.AbstractEventLoop:
    """The judges' event loop, started on first use (again in a forked worker process)."""
    global _LOOP
    with _LOOP_LOCK:
        if _LOOP is None or _LOOP[0] != os.getpid() or _LOOP[1].is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="evalsvc-judge-loop", daemon=True).start()
            _LOOP = (os.getpid(), loop)
        return _LOOP[1]


_FENCED_JSON = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.S)


def parse_verdict(raw: Any, template: JudgeTemplate) -> tuple[float, str, str | None]:
    """``(score in [0, 1], label, reasoning)`` from the model's JSON, or UnrecoverableError.

    >>> parse_verdict('{"reasoning": "ok", "verdict": "safe"}', load_template("toxicity"))
    (1.0, 'safe', 'ok')
    """
    if not isinstance(raw, str) or not raw.strip():
        raise UnrecoverableError("unparseable verdict: empty answer")
    text = raw.strip()
    fenced = _FENCED_JSON.match(text)
    if fenced:
        text = fenced.group(1)
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise UnrecoverableError(f"unparseable verdict: not JSON: {raw[:200]!r}") from None
    if not isinstance(data, dict):
        raise UnrecoverableError(f"unparseable verdict: not a JSON object: {raw[:200]!r}")
    reasoning = data.get("reasoning")
    reasoning = str(reasoning) if reasoning is not None else None
    if template.choice_scores is not None:
        label = data.get("verdict")
        if not isinstance(label, str):
            raise UnrecoverableError(f"unparseable verdict: no 'verdict' label in {raw[:200]!r}")
        for known, choice in template.choice_scores.items():
            if known.lower() == label.strip().lower():
                return float(choice), known, reasoning
        raise UnrecoverableError(f"unparseable verdict: {label!r} is not one of {template.labels()}")
    assert template.scale is not None
    score: Any = data.get("score")
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise UnrecoverableError(f"unparseable verdict: no numeric 'score' in {raw[:200]!r}")
    lo, hi = template.scale.min, template.scale.max
    if not lo <= score <= hi:
        raise UnrecoverableError(f"unparseable verdict: score {score} is outside {lo}..{hi}")
    return (float(score) - lo) / (hi - lo), str(score), reasoning


def _classify(exc: Exception) -> tuple[bool, str]:
    """Whether a failed call is worth retrying (429, 5xx, timeouts, lost connections)."""
    status = getattr(exc, "status_code", None)
    name = type(exc).__name__
    text = f"{name}: {str(exc)[:300]}"
    if "Timeout" in name or isinstance(exc, TimeoutError | asyncio.TimeoutError):
        return True, f"timed out ({text})"
    if isinstance(status, int):
        return (status in (408, 409, 429) or status >= 500), f"HTTP {status} ({text})"
    if "Connection" in name or "RateLimit" in name or "ServiceUnavailable" in name or "InternalServer" in name:
        return True, text
    return False, text


def _backoff(exc: Exception, base: float, attempt: int) -> float:
    """Exponential backoff with jitter, or the server's Retry-After when it gives one (capped)."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    retry_after = headers.get("retry-after") if headers is not None else None
    if retry_after is not None:
        try:
            return min(float(retry_after), 60.0)
        except ValueError:
            pass
    delay = base * 2 ** (attempt - 1)
    return float(min(delay * (0.5 + random.random()), 60.0))  # jitter, not crypto
