"""Action parameters as templates: compiled and checked at load, rendered at evaluate.

Templates run in Jinja2's sandbox with autoescape off (the output is text, not HTML) and
``StrictUndefined``: a missing value is an error rather than an empty string, so a ticket is
never filed with a silently blank field because of a misspelt name; ``{{ x | default('') }}``
opts into a fallback. A value that exists but is null (Okta did not send it) renders as an
empty string; ``{{ x | default('n/a', true) }}`` replaces it.
Attribute names starting with ``_`` are refused at load as well as by the sandbox at render.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.sandbox import SandboxedEnvironment

_MARKERS = ("{{", "{%", "{#")


class TemplateProblem(ValueError):
    """A parameter could not be compiled or rendered; ``path`` names it (``params.summary``)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True, slots=True)
class CompiledText:
    source: str
    template: Template


@functools.cache
def template_environment() -> SandboxedEnvironment:
    return SandboxedEnvironment(
        autoescape=False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        finalize=_null_as_empty,
    )


def _null_as_empty(value: Any) -> Any:
    # A field Okta did not send is null in the fact: it renders as nothing. A name that does not
    # exist at all (a typo) is still an error through StrictUndefined.
    return "" if value is None else value


def compile_params(params: Mapping[str, Any], path: str = "params") -> tuple[Any, list[str]]:
    """The params with every templated string compiled, and the problems found (``path: why``)."""
    problems: list[str] = []
    compiled = _compile(dict(params), path, problems)
    return compiled, problems


def render_params(compiled: Any, variables: Mapping[str, Any], path: str = "params") -> Any:
    """Plain data with every template rendered; raises :class:`TemplateProblem`."""
    if isinstance(compiled, CompiledText):
        try:
            return compiled.template.render(variables)
        # Templates are code from the rules file: any error they raise (undefined value, sandbox
        # refusal, a type error inside an expression) is reported for this parameter, not raised.
        except Exception as exc:
            raise TemplateProblem(path, f"{type(exc).__name__}: {exc}") from None
    if isinstance(compiled, dict):
        return {
            key: render_params(value, variables, f"{path}.{key}")
            for key, value in compiled.items()
        }
    if isinstance(compiled, list):
        return [render_params(item, variables, f"{path}[{i}]") for i, item in enumerate(compiled)]
    return compiled


def _compile(value: Any, path: str, problems: list[str]) -> Any:
    if isinstance(value, str):
        if not any(marker in value for marker in _MARKERS):
            return value
        return _compile_text(value, path, problems)
    if isinstance(value, dict):
        compiled: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                problems.append(f"{path}: keys must be strings, got {key!r}")
                continue
            compiled[key] = _compile(item, f"{path}.{key}", problems)
        return compiled
    if isinstance(value, list):
        return [_compile(item, f"{path}[{i}]", problems) for i, item in enumerate(value)]
    if value is None or isinstance(value, bool | int | float):
        return value
    problems.append(f"{path}: unsupported value of type {type(value).__name__}")
    return None


def _compile_text(text: str, path: str, problems: list[str]) -> CompiledText | None:
    environment = template_environment()
    try:
        tree = environment.parse(text)
    except TemplateSyntaxError as exc:
        problems.append(f"{path}: template syntax error on line {exc.lineno}: {exc.message}")
        return None
    private = sorted(_private_names(tree))
    if private:
        names = ", ".join(repr(name) for name in private)
        problems.append(f"{path}: template uses {names}: names starting with '_' are not allowed")
        return None
    try:
        # Compiling checks what parsing does not, e.g. that every filter exists.
        template = environment.from_string(text)
    except TemplateSyntaxError as exc:
        problems.append(f"{path}: template error on line {exc.lineno}: {exc.message}")
        return None
    return CompiledText(text, template)


def _private_names(tree: nodes.Template) -> set[str]:
    found = {node.attr for node in tree.find_all(nodes.Getattr) if node.attr.startswith("_")}
    for node in tree.find_all(nodes.Getitem):
        value = node.arg.value if isinstance(node.arg, nodes.Const) else None
        if isinstance(value, str) and value.startswith("_"):
            found.add(value)
    for name in tree.find_all(nodes.Name):
        if name.name.startswith("_"):
            found.add(name.name)
    return found
