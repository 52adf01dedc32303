"""What a guardrail is, as the config file (a model's `guardrails:`, the top-level `guardrails:`) and a request
(`options.guardrails`, `extra_body={"guardrails": ...}` on the OpenAI endpoints) write it.

It lives in core because the config file holds it; the guardrails themselves (PII scrubbing, moderation gates)
are in `switchyard.guardrails`."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# The kinds of personal data and secrets the PII guardrail finds (`switchyard.guardrails.pii` detects them;
# the names live here because the config file and requests name them, and core imports nothing above it).
PII_ENTITIES = (
    "EMAIL",
    "PHONE",
    "CREDIT_CARD",
    "IBAN",
    "NATIONAL_ID",
    "US_SSN",
    "IP_ADDRESS",
    "SECRET",
    "URL_CREDENTIALS",
)

PiiMode = Literal["mask", "hash", "remove", "reversible"]
Direction = Literal["request", "response"]
WhenUnavailable = Literal["block", "allow", "keywords"]


def _request_only() -> list[Direction]:
    return ["request"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads an unquoted `on:` key as the boolean true: take it as the `on` it was written as.
        if isinstance(data, dict) and True in data and "on" not in data:
            return {("on" if key is True else key): value for key, value in data.items()}
        return data


class PiiGuardrail(_Strict):
    """Personal data and secrets found in text are replaced before the text goes on (to the provider for
    `request`, to the caller and the database for `response`). `entities` unset: every type."""

    mode: PiiMode = "mask"
    entities: list[str] | None = Field(default=None, min_length=1)
    on: list[Direction] = Field(default_factory=_request_only, min_length=1)

    @field_validator("entities")
    @classmethod
    def _known_entities(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        unknown = [name for name in value if name not in PII_ENTITIES]
        if unknown:
            raise ValueError(f"unknown PII entities {unknown}; the entities are: {', '.join(PII_ENTITIES)}")
        return value

    @model_validator(mode="after")
    def _reversible_on_request(self) -> PiiGuardrail:
        # Reversible replaces the request's values and puts them back in the answer: an answer's own values
        # have nothing to be restored from, so scrubbing it "reversibly" means nothing.
        if self.mode == "reversible" and self.on != ["request"]:
            raise ValueError("reversible mode scrubs the request and restores the answer: `on` must be [request]")
        return self


class ModerationGuardrail(_Strict):
    """Text is scored by `model` (a `moderate` model of the config); a category at or over its threshold blocks
    the call (`content_blocked`). `when_unavailable` says what happens when the moderation model cannot answer."""

    model: str = Field(min_length=1)
    thresholds: dict[str, float] = Field(default_factory=dict)
    on: list[Direction] = Field(default_factory=_request_only, min_length=1)
    when_unavailable: WhenUnavailable = "block"
    # `keywords` mode: blocked words and phrases (case-insensitive) instead of the shipped list.
    keywords: list[str] | None = None


class Guardrails(_Strict):
    """The guardrails of a call; each kind is set or not."""

    pii: PiiGuardrail | None = None
    moderation: ModerationGuardrail | None = None

    def is_empty(self) -> bool:
        return self.pii is None and self.moderation is None
