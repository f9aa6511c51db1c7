"""The rules file as written: pydantic models that check its shape.

Only structure is checked here (types, required and unknown keys, one-of constraints). The
vocabularies, regexes, templates and cross-references are checked by the compiler, which turns
these models into the runtime rules, so every message has the same form.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from factorflow.rules.templates import DEFAULT_MAX_LOOP_ITERATIONS, DEFAULT_MAX_OUTPUT_BYTES

IDENTIFIER = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"


class Strict(BaseModel):
    # Unknown keys are errors: a misspelt condition must not silently stop applying.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class SetMatch(Strict):
    """``{in: [...]}`` or ``{not_in: [...]}``; a bare list or value is shorthand for ``in``."""

    in_: list[str] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        if isinstance(value, list):
            return {"in": value}
        if isinstance(value, str):
            return {"in": [value]}
        return value

    @model_validator(mode="after")
    def _one_of(self) -> SetMatch:
        if (self.in_ is None) == (self.not_in is None):
            raise PydanticCustomError("one_of", "give exactly one of 'in' or 'not_in'")
        return self


class AttributeMatch(Strict):
    """Tests on one profile attribute; every test given must hold."""

    equals: Any = None
    not_equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in", min_length=1)
    not_in: list[Any] | None = Field(default=None, min_length=1)
    matches: str | None = None
    exists: bool | None = None

    @model_validator(mode="after")
    def _some_test(self) -> AttributeMatch:
        if not self.model_fields_set:
            raise PydanticCustomError(
                "no_test", "give at least one of equals, not_equals, in, not_in, matches, exists"
            )
        return self


class GroupMatch(Strict):
    """Group names (case-insensitive) or group ids; every list given must hold."""

    any: list[str] | None = Field(default=None, min_length=1)
    all: list[str] | None = Field(default=None, min_length=1)
    none: list[str] | None = Field(default=None, min_length=1)

    @model_validator(mode="after")
    def _some_list(self) -> GroupMatch:
        if self.any is None and self.all is None and self.none is None:
            raise PydanticCustomError("no_test", "give at least one of any, all, none")
        return self


class RecentEventMatch(Strict):
    within_hours: float = Field(gt=0, le=24 * 90)
    kinds: list[str] | None = Field(default=None, min_length=1)
    factor_types: list[str] | None = Field(default=None, min_length=1)


class When(Strict):
    kind: SetMatch | None = None
    factor_type: SetMatch | None = None
    strength: SetMatch | None = None
    enrolled_by: SetMatch | None = None
    engine: SetMatch | None = None
    country: SetMatch | None = None
    zone: SetMatch | None = None
    profile: dict[str, AttributeMatch] | None = Field(default=None, min_length=1)
    groups: GroupMatch | None = None
    recent_factor_event: RecentEventMatch | None = None
    any_of: list[When] | None = Field(default=None, min_length=1)


class ActionModel(Strict):
    id: str = Field(pattern=IDENTIFIER)
    kind: str
    params: dict[str, Any] = Field(default_factory=dict)


class SuppressModel(Strict):
    key: list[str] = Field(min_length=1)
    window_hours: float = Field(gt=0, le=24 * 366)


class RuleModel(Strict):
    id: str = Field(pattern=IDENTIFIER)
    description: str = ""
    enabled: bool = True
    when: When = Field(default_factory=When)
    actions: list[ActionModel]
    suppress: SuppressModel | None = None


class DefaultsModel(Strict):
    actions: list[ActionModel]


class TemplateLimitsModel(Strict):
    """``template_limits``: how far one rendering of one parameter may go."""

    max_output_bytes: int = Field(default=DEFAULT_MAX_OUTPUT_BYTES, gt=0, le=16 * 1024 * 1024)
    max_loop_iterations: int = Field(default=DEFAULT_MAX_LOOP_ITERATIONS, gt=0, le=10_000_000)


class RulesFileModel(Strict):
    """The top level. ``rules`` stays raw here so each rule is checked on its own."""

    version: Literal[1]
    match: Literal["all", "first"]
    defaults: Any = None  # checked on its own (DefaultsModel)
    rules: list[Any]
    template_limits: TemplateLimitsModel = Field(default_factory=TemplateLimitsModel)
