"""Action parameters as templates: compiled and checked at load, rendered at evaluate.

Templates run in Jinja2's sandbox with autoescape off (the output is text, not HTML) and
``StrictUndefined``: a missing value is an error rather than an empty string, so a ticket is
never filed with a silently blank field because of a misspelt name; ``{{ x | default('') }}``
opts into a fallback. A value that exists but is null (Okta did not send it) renders as an
empty string; ``{{ x | default('n/a', true) }}`` replaces it.
Attribute names starting with ``_`` are refused at load as well as by the sandbox at render.

Renderings are bounded (:class:`TemplateLimits`, the rules file's ``template_limits``): a
rendered value is at most ``max_output_bytes`` of UTF-8, and one rendering runs at most
``max_loop_iterations`` loop iterations (``range`` counts its length up front). The same bounds
hold for the values a template builds on the way: text or lists made by repeating (``*``),
adding (``+``, ``~``), padding (``center``, ``indent``, ``ljust``, format widths), joining or
replacing, and integer powers. Going past a limit fails that one parameter with a message that
names the limit; nothing is cut short silently. The bounds are there for mistakes and runaway
data (a loop over a huge range, a field far larger than expected), not to contain a hostile
author: a rules file is code and is reviewed as such.

Constant folding is off, so no part of a template runs while the rules file is loaded.
"""

from __future__ import annotations

import functools
import math
import re
import string
import sys
from collections.abc import Generator, Iterable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes, pass_eval_context
from jinja2.filters import make_attrgetter
from jinja2.nodes import EvalContext
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import Namespace
from jinja2.visitor import NodeTransformer

DEFAULT_MAX_OUTPUT_BYTES = 64 * 1024
DEFAULT_MAX_LOOP_ITERATIONS = 10_000
MAX_POWER_BITS = 10_000  # ``**`` on integers: about 3,000 decimal digits
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


@dataclass(frozen=True, slots=True)
class TemplateLimits:
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES  # per rendered value, UTF-8
    max_loop_iterations: int = DEFAULT_MAX_LOOP_ITERATIONS  # per rendered value, all loops


class TemplateLimitExceeded(Exception):
    """A rendering went past one of its :class:`TemplateLimits`; the message names the limit."""


class _Budget:
    __slots__ = ("iterations", "limits")

    def __init__(self, limits: TemplateLimits) -> None:
        self.limits = limits
        self.iterations = 0

    def iterate(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_loop_iterations:
            raise TemplateLimitExceeded(
                f"the template ran more than {self.limits.max_loop_iterations} loop iterations "
                "(template_limits.max_loop_iterations)"
            )


_ACTIVE: ContextVar[_Budget | None] = ContextVar("factorflow_template_budget", default=None)


def _budget() -> _Budget:
    # Templates are rendered only through render_params, which sets the budget; anything else
    # gets the default limits.
    return _ACTIVE.get() or _Budget(TemplateLimits())


def _check_text(length: int, what: str) -> None:
    limit = _budget().limits.max_output_bytes
    if length > limit:
        raise TemplateLimitExceeded(
            f"{what} would be {length} characters, more than the limit of {limit} bytes "
            "(template_limits.max_output_bytes)"
        )


def _check_items(count: int, what: str) -> None:
    limit = _budget().limits.max_loop_iterations
    if count > limit:
        raise TemplateLimitExceeded(
            f"{what} would have {count} items, more than the limit of {limit} "
            "(template_limits.max_loop_iterations)"
        )


def _check_value(value: Any, what: str) -> None:
    if isinstance(value, str):
        _check_text(len(value), what)
    elif isinstance(value, list | tuple | dict):
        _check_items(len(value), what)


# -- the checks behind operators, calls and filters -------------------------------------------

# printf-style conversions: %[(name)][flags][width][.precision]type
_PRINTF = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_printf(text: str) -> None:
    for width, precision in _PRINTF.findall(text):
        for number in (width, precision):
            if number == "*":
                raise TemplateLimitExceeded("'*' widths in % formats are not allowed in templates")
            if number:
                _check_text(int(number), "a % format width")


def _check_format_spec(text: str) -> None:
    for _literal, field, spec, _conversion in string.Formatter().parse(text):
        if field is None or not spec:
            continue
        if "{" in spec:
            raise TemplateLimitExceeded(
                "nested fields in format specs are not allowed in templates")
        for number in re.findall(r"\d+", spec):
            _check_text(int(number), "a format width")


def _check_repeat(sequence: Any, times: Any) -> None:
    if not isinstance(times, int) or not isinstance(sequence, str | list | tuple):
        return
    size = len(sequence) * max(times, 0)
    if isinstance(sequence, str):
        _check_text(size, "repeated text")
    else:
        _check_items(size, "a repeated list")


def _check_sum(left: Any, right: Any) -> None:
    if isinstance(left, str) and isinstance(right, str):
        _check_text(len(left) + len(right), "added text")
    elif isinstance(left, list | tuple) and isinstance(right, list | tuple):
        _check_items(len(left) + len(right), "an added list")


def _check_power(base: Any, exponent: Any) -> None:
    if not (isinstance(base, int) and isinstance(exponent, int)) or exponent <= 0:
        return
    bits = math.ceil(exponent * math.log2(abs(base))) if abs(base) > 1 else 0
    if bits > MAX_POWER_BITS:
        raise TemplateLimitExceeded(
            f"a power of about {bits} bits, more than the limit of {MAX_POWER_BITS} bits")


def _replaced_size(text: str, old: str, new: str, count: int | None) -> int:
    hits = text.count(old) if old else len(text) + 1
    if count is not None and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * (len(new) - len(old))


def _check_str_method(text: str, name: str, args: tuple[Any, ...]) -> None:
    if name in ("center", "ljust", "rjust", "zfill") and args and isinstance(args[0], int):
        _check_text(args[0], f"str.{name}()")
    elif name == "expandtabs":
        size = args[0] if args and isinstance(args[0], int) else 8
        _check_text(len(text) + text.count("\t") * size, "str.expandtabs()")
    elif name == "replace" and len(args) >= 2 and all(isinstance(a, str) for a in args[:2]):
        count = args[2] if len(args) > 2 and isinstance(args[2], int) else None
        _check_text(_replaced_size(text, args[0], args[1], count), "str.replace()")


def _joined_size(items: list[Any], separator: str) -> int:
    return sum(len(str(item)) for item in items) + len(separator) * max(len(items) - 1, 0)


class _BoundedNamespace(Namespace):
    """``namespace()`` whose attributes are held to the limits (a loop could double one)."""

    def __setitem__(self, name: str, value: Any) -> None:
        _check_value(value, f"namespace attribute {name!r}")
        super().__setitem__(name, value)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    try:
        size = len(numbers)
    except OverflowError:
        size = sys.maxsize
    _check_items(size, f"range({', '.join(map(str, args))})")
    return numbers


def _counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """What every ``{% for %}`` iterates: the items, each one counted against the budget."""
    budget = _budget()
    for item in iterable:
        budget.iterate()
        yield item


def _concat(parts: list[Any]) -> str:
    """``a ~ b``: Jinja's string concatenation, held to the text limit."""
    texts = [str(part) for part in parts]
    _check_text(sum(map(len, texts)), "concatenated text")
    return "".join(texts)


class _Guard(NodeTransformer):
    """Routes every loop through :func:`_counted` and every ``~`` through :func:`_concat`."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        node.iter = nodes.Filter(node.iter, _COUNTED, [], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        return nodes.Filter(nodes.List(node.nodes, lineno=node.lineno), _CONCAT, [], [],
                            None, None, lineno=node.lineno)


_COUNTED = "ff_counted"
_CONCAT = "ff_concat"


class _Sandbox(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "+", "**", "%"})

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            _check_repeat(left, right)
            _check_repeat(right, left)
        elif operator == "+":
            _check_sum(left, right)
        elif operator == "**":
            _check_power(left, right)
        elif operator == "%" and isinstance(left, str):
            _check_printf(left)
        return super().call_binop(context, operator, left, right)

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        owner = getattr(obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(obj, "__name__", "")
            if name == "join" and len(args) == 1 and not kwargs:
                items = list(args[0])
                _check_text(_joined_size(items, owner), "str.join()")
                args = (items,)
            else:
                _check_str_method(owner, name, args)
        return super().call(context, obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is not None:
            _check_format_spec(value.__self__)
        return wrapped


def _bounded_filters(filters: dict[str, Any]) -> dict[str, Any]:
    center, indent, fmt = filters["center"], filters["indent"], filters["format"]
    replace, join = filters["replace"], filters["join"]
    batch, slice_ = filters["batch"], filters["slice"]

    def do_center(value: Any, width: int = 80) -> Any:
        _check_text(width, "center()")
        return center(value, width)

    def do_indent(value: Any, width: int | str = 4, first: bool = False,
                  blank: bool = False) -> Any:
        text = str(value)
        step = width if isinstance(width, int) else len(str(width))
        _check_text(len(text) + (text.count("\n") + 1) * max(step, 0), "indent()")
        return indent(value, width, first, blank)

    def do_format(value: Any, *args: Any, **kwargs: Any) -> Any:
        _check_printf(str(value))
        return fmt(value, *args, **kwargs)

    @pass_eval_context
    def do_replace(eval_ctx: EvalContext, value: Any, old: Any, new: Any,
                   count: int | None = None) -> Any:
        _check_text(_replaced_size(str(value), str(old), str(new), count), "replace()")
        return replace(eval_ctx, value, old, new, count)

    @pass_eval_context
    def do_join(eval_ctx: EvalContext, value: Iterable[Any], d: str = "",
                attribute: str | int | None = None) -> Any:
        items = list(value)
        if attribute is not None:
            items = list(map(make_attrgetter(eval_ctx.environment, attribute), items))
        _check_text(_joined_size(items, str(d)), "join()")
        return join(eval_ctx, items, d)

    def do_batch(value: Any, linecount: int, fill_with: Any = None) -> Any:
        _check_items(linecount, "a batch()")
        return batch(value, linecount, fill_with)

    def do_slice(value: Any, slices: int, fill_with: Any = None) -> Any:
        _check_items(slices, "slice()")
        return slice_(value, slices, fill_with)

    return {
        "center": do_center, "indent": do_indent, "format": do_format, "replace": do_replace,
        "join": do_join, "batch": do_batch, "slice": do_slice,
        _COUNTED: _counted, _CONCAT: _concat,
    }


@functools.cache
def template_environment() -> ImmutableSandboxedEnvironment:
    environment = _Sandbox(
        autoescape=False,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        finalize=_null_as_empty,
        optimized=False,  # no constant folding: nothing of a template runs at load
    )
    environment.filters.update(_bounded_filters(environment.filters))
    environment.globals["range"] = _bounded_range
    environment.globals["namespace"] = _BoundedNamespace
    return environment


def _null_as_empty(value: Any) -> Any:
    # A field Okta did not send is null in the fact: it renders as nothing. A name that does not
    # exist at all (a typo) is still an error through StrictUndefined.
    if value is None:
        return ""
    if isinstance(value, str):
        # Output inside macros and blocks is collected before it is written: each printed
        # value is held to the limit there too.
        _check_text(len(value), "a printed value")
    return value


def compile_params(params: Mapping[str, Any], path: str = "params") -> tuple[Any, list[str]]:
    """The params with every templated string compiled, and the problems found (``path: why``)."""
    problems: list[str] = []
    compiled = _compile(dict(params), path, problems)
    return compiled, problems


def render_params(
    compiled: Any, variables: Mapping[str, Any], path: str = "params",
    limits: TemplateLimits = TemplateLimits(),
) -> Any:
    """Plain data with every template rendered; raises :class:`TemplateProblem`."""
    if isinstance(compiled, CompiledText):
        try:
            return _render(compiled.template, variables, limits)
        except TemplateLimitExceeded as exc:
            raise TemplateProblem(path, str(exc)) from None
        # Templates are code from the rules file: any error they raise (undefined value, sandbox
        # refusal, a type error inside an expression) is reported for this parameter, not raised.
        except Exception as exc:
            raise TemplateProblem(path, f"{type(exc).__name__}: {exc}") from None
    if isinstance(compiled, dict):
        return {
            key: render_params(value, variables, f"{path}.{key}", limits)
            for key, value in compiled.items()
        }
    if isinstance(compiled, list):
        return [render_params(item, variables, f"{path}[{i}]", limits)
                for i, item in enumerate(compiled)]
    return compiled


def _render(template: Template, variables: Mapping[str, Any], limits: TemplateLimits) -> str:
    """The template's text, streamed so that a rendering past the output limit stops there
    instead of being built in full."""
    token = _ACTIVE.set(_Budget(limits))
    try:
        parts: list[str] = []
        size = 0
        stream = template.generate(variables)
        assert isinstance(stream, Generator)
        try:
            for chunk in stream:
                size += len(chunk) if chunk.isascii() else len(
                    chunk.encode("utf-8", "surrogatepass"))
                if size > limits.max_output_bytes:
                    raise TemplateLimitExceeded(
                        f"the rendered text is longer than the limit of "
                        f"{limits.max_output_bytes} bytes (template_limits.max_output_bytes)"
                    )
                parts.append(chunk)
        finally:
            stream.close()
        return "".join(parts)
    finally:
        _ACTIVE.reset(token)


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
        template = environment.from_string(_Guard().visit(tree))
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
