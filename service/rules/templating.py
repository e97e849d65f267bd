"""Jinja2 templates for action parameters: sandboxed, strict about unknown names, plain text.

Templates come from account rules files, so they are untrusted code running inside our workers.
They render in an immutable Jinja sandbox (no ``__dunder__`` access, no mutation of lists or dicts),
with autoescape off (Slack and SMS text is not HTML) and ``StrictUndefined`` (a misspelt field is
an error, not a silent blank), while a field that is present but ``None`` renders as "".

The sandbox blocks code execution but not resource exhaustion, so rendering also enforces:

* at most :data:`MAX_STEPS` loop iterations plus calls, filters and tests per render (nested loops,
  macro recursion, ``map`` over a long sequence: items that filters yield are counted too);
* a wall-clock deadline (:data:`MAX_RENDER_SECONDS` per action, all its params together), checked at
  every step, so work hidden inside filters cannot run on for minutes;
* ``range()`` of at most :data:`MAX_RANGE` items; no ``lipsum``;
* size checks *before* the allocating operators ``+ * ** %`` and ``~`` and before the filters
  whose argument sets the output size (``center``, ``indent``, ``format``, ``join``, ``replace``...);
* what every filter and call returns is checked too: a string of at most :data:`MAX_OUTPUT_CHARS`
  characters, a list, tuple, dict or set of at most :data:`MAX_ITEMS` items (``'x' * 99999 | list``);
* at most :data:`MAX_OUTPUT_CHARS` characters of output per template.

Only the errors a template can cause (arithmetic, lookup, type, value, recursion, memory) become
TemplateErrors; anything else, such as a worker's soft time limit, passes through untouched.

Every failure, at compile time or at render time, is a :class:`TemplateError` (a
:class:`~integrations.base.PermanentError`: retrying a broken template cannot help).

Context (:func:`event_context`): ``event.data`` merged with ``event`` ({type, key}), ``account``
({id, name, timezone}) and ``occurred_at`` (aware datetime); these four names win over data keys.

Filters: ``phone`` (national format for numbers of the account's region, else international;
``phone('e164' | 'international' | 'national')``; anything unparseable comes back unchanged),
``localtime`` (ISO string or datetime in the account's time zone; default format
:data:`DEFAULT_LOCALTIME_FORMAT`, or any strftime format) and ``duration`` (seconds ->
"42s", "1m 05s", "1h 02m 03s").
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import phonenumbers
from jinja2 import nodes, pass_context
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from integrations.base import PermanentError
from service.events import Event, aware

MAX_OUTPUT_CHARS = 100_000  # per rendered string; Slack caps text at 40k, a Sheets cell at 50k
MAX_STEPS = 100_000  # loop iterations plus calls in one render: far above any sane message template
MAX_RANGE = 10_000
MAX_ITEMS = 10_000  # items in a list, tuple, dict or set that a filter or call returns
MAX_RENDER_SECONDS = 1.0  # wall clock per action (all its params): a sane template renders in milliseconds
MAX_FILTER_ARGUMENT = 1_000  # widths, counts and fill strings of the size-setting filters
MAX_INT_BITS = 4_096  # for `**` and `*` on integers
MAX_ERROR_CHARS = 500
TEMPLATE_CACHE_SIZE = 1_024
DEFAULT_LOCALTIME_FORMAT = "%a %b %-d, %-I:%M %p %Z"

# Filter names that cannot be written in a template (they are not identifiers), used by the guards
# the compiler inserts around every loop and every `~` concatenation.
_COUNTED_ITERATION = "pbxrelay:counted-iteration"
_CHECKED_CONCAT = "pbxrelay:checked-concat"

# str methods whose argument sets the size of the result; templates use the checked filters instead.
_UNBOUNDED_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "format", "format_map",
                                    "join", "replace"})
# Jinja filters whose non-value arguments set the output size: capped at MAX_FILTER_ARGUMENT.
_SIZE_ARGUMENT_FILTERS = ("center", "indent", "batch", "slice", "wordwrap", "tojson")
# Filters that walk their input item by item (a string: character by character) in Python, where no
# step is counted: their input is capped at MAX_ITEMS, so one call stays within milliseconds.
_ITEMWISE_FILTERS = frozenset({"batch", "dictsort", "groupby", "list", "map", "max", "min", "reject", "rejectattr",
                               "select", "selectattr", "slice", "sort", "sum", "unique", "urlize", "wordwrap"})
# printf-style conversions, to find widths and precisions before `%` allocates them.
_PERCENT_CONVERSION = re.compile(r"%(?:\([^)]*\))?[#0+\- ]*(\*|\d+)?(?:\.(\*|\d+))?")
_PHONE_FORMATS = {
    "e164": phonenumbers.PhoneNumberFormat.E164,
    "international": phonenumbers.PhoneNumberFormat.INTERNATIONAL,
    "national": phonenumbers.PhoneNumberFormat.NATIONAL,
}


class TemplateError(PermanentError):
    """A template that does not compile or cannot render; retrying cannot fix it."""


# What a template can break by itself: `1/0`, `'a' + 1`, `x[9]`, int('x'), deep recursion, a huge list.
# Deliberately not `Exception`: a worker's soft time limit (Celery's SoftTimeLimitExceeded is an
# Exception) must reach the task that set it, not become this template's error.
_TEMPLATE_FAULTS = (ArithmeticError, AttributeError, LookupError, TypeError, ValueError, RuntimeError, MemoryError)


@dataclass
class _RenderState:
    """What the filters and guards of one render need: the account's locale, the step count and the deadline."""

    timezone: str
    region: str
    deadline: float  # time.monotonic() value
    steps: int = 0

    def step(self) -> None:
        """Count one loop iteration, call, filter or test; TemplateError past MAX_STEPS or the deadline."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateError(f"template runs more than {MAX_STEPS} loop iterations and calls")
        if time.monotonic() > self.deadline:
            raise TemplateError(f"template ran out of time: rendering an action may take {MAX_RENDER_SECONDS:g} s "
                                f"(filters and loops included)", code="template")


def render_deadline() -> float:
    """The deadline (a time.monotonic() value) of a render starting now; share it across one action's params."""
    return time.monotonic() + MAX_RENDER_SECONDS


# A ContextVar, not template globals: compiled templates are shared between threads, and templates
# must not be able to read or overwrite the locale or the step count.
_render_state: ContextVar[_RenderState] = ContextVar("pbxrelay_render_state")


def _limit_error(message: str) -> TemplateError:
    return TemplateError(f"template too large: {message}", code="template")


def _check_size(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise _limit_error(f"{what} would be {size} long (limit {MAX_OUTPUT_CHARS})")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_percent_format(value: Any) -> None:
    """Refuse printf widths and precisions that would allocate a huge string."""
    if not isinstance(value, str):
        return
    for match in _PERCENT_CONVERSION.finditer(value):
        for number in match.groups():
            if number == "*" or (number is not None and int(number) > MAX_FILTER_ARGUMENT):
                raise _limit_error(f"format width or precision above {MAX_FILTER_ARGUMENT}")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Compute the size of ``left <operator> right`` before Python allocates it."""
    sized = (str, list, tuple)
    if operator == "*":
        if isinstance(left, sized) and _is_int(right):
            _check_size(len(left) * right, "repeated value")
        elif isinstance(right, sized) and _is_int(left):
            _check_size(len(right) * left, "repeated value")
        elif _is_int(left) and _is_int(right) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise _limit_error(f"integer product above {MAX_INT_BITS} bits")
    elif operator == "+":
        if isinstance(left, sized) and isinstance(right, sized):
            _check_size(len(left) + len(right), "concatenation")
    elif operator == "**":
        if _is_int(left) and _is_int(right) and abs(left) > 1 and right * left.bit_length() > MAX_INT_BITS:
            raise _limit_error(f"integer power above {MAX_INT_BITS} bits")
    elif operator == "%":
        _check_percent_format(left)


class _GuardTransformer(NodeTransformer):
    """Wrap every loop's iterable in the step counter and every `~` in the size check."""

    def __init__(self, environment: jinja2.Environment) -> None:
        self.environment = environment

    def _guard(self, node: nodes.Expr, filter_name: str) -> nodes.Filter:
        guarded = nodes.Filter(node, filter_name, [], [], None, None, lineno=node.lineno)
        guarded.set_environment(self.environment)
        return guarded

    def visit_For(self, node: nodes.For) -> nodes.For:
        """Count every iteration of the loop."""
        self.generic_visit(node)
        node.iter = self._guard(node.iter, _COUNTED_ITERATION)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Filter:
        """Replace `a ~ b` by a concatenation that checks the result size first."""
        self.generic_visit(node)
        parts = nodes.List(list(node.nodes), lineno=node.lineno)
        parts.set_environment(self.environment)
        return self._guard(parts, _CHECKED_CONCAT)


class _GuardedCodeGenerator(CodeGenerator):
    """Jinja's compiler, applying :class:`_GuardTransformer` to the tree before generating code."""

    def visit_Template(self, node: nodes.Template, frame: Any = None) -> None:
        """Insert the guards, then compile as usual."""
        _GuardTransformer(self.environment).visit(node)
        super().visit_Template(node, frame)


class _GuardedEnvironment(ImmutableSandboxedEnvironment):
    """The immutable sandbox plus step counting on calls and size checks on allocating operators."""

    code_generator_class = _GuardedCodeGenerator
    intercepted_binops = frozenset({"+", "*", "**", "%"})

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        """The sandbox's rules, minus the str methods whose argument sets the result size."""
        if isinstance(obj, str) and attr in _UNBOUNDED_STR_METHODS:
            return False
        return super().is_safe_attribute(obj, attr, value)

    def wrap_str_format(self, value: Any) -> None:
        """Never hand out str.format (see is_safe_attribute)."""
        # The sandbox normally hands out a safe str.format; refuse it instead, like the other
        # _UNBOUNDED_STR_METHODS, because "{:999999999}" allocates before anything can check it.
        return None

    def call(self, context: Any, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Count the call (macros included), let the sandbox check and make it, then check what it returned."""
        _render_state.get().step()
        return _checked_result(super().call(context, obj, *args, **kwargs), "call")

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        """Check the size of the result of + * ** % before computing it."""
        _check_binop(operator, left, right)
        return super().call_binop(context, operator, left, right)


@pass_context
def _counted_iteration(context: Any, iterable: Iterable[Any]) -> Iterator[Any]:
    return _counted(iter(iterable))


def _checked_result(value: Any, what: str) -> Any:
    """``value`` if it is small; an iterator comes back counted, item by item, against the step budget."""
    if isinstance(value, str):
        _check_size(len(value), f"{what} result")
    elif isinstance(value, (list, tuple, dict, set, frozenset)):
        if len(value) > MAX_ITEMS:
            raise _limit_error(f"{what} result of {len(value)} items (limit {MAX_ITEMS})")
    elif isinstance(value, Iterator):
        return _counted(value)
    return value


def _counted(iterator: Iterator[Any]) -> Iterator[Any]:
    state = _render_state.get()
    for item in iterator:
        state.step()
        yield item


def _budgeted(function: Callable[..., Any], what: str, *, itemwise: bool = False) -> Callable[..., Any]:
    """Wrap a filter or test: one step (and a deadline check) per call, and its result checked.

    ``itemwise`` filters also refuse an input of more than MAX_ITEMS items (or characters).
    """
    value_at = 1 if hasattr(function, "jinja_pass_arg") else 0  # after the context Jinja passes first

    @functools.wraps(function)  # also copies jinja_pass_arg, so Jinja calls the wrapper the same way
    def budgeted(*args: Any, **kwargs: Any) -> Any:
        # Outside a render (Jinja constant-folding at compile time) there is no state: LookupError tells
        # Jinja the value is not constant, so all the work happens at render time, under the budget.
        _render_state.get().step()
        if itemwise and len(args) > value_at and isinstance(args[value_at], (str, list, tuple, dict)) \
                and len(args[value_at]) > MAX_ITEMS:
            raise _limit_error(f"{what} of {len(args[value_at])} items or characters (limit {MAX_ITEMS})")
        return _checked_result(function(*args, **kwargs), what)

    return budgeted


@pass_context
def _checked_concat(context: Any, parts: list[Any]) -> str:
    texts = [str(part) for part in parts]
    _check_size(sum(map(len, texts)), "concatenation")
    return "".join(texts)


def _bounded_range(*args: int) -> range:
    numbers = range(*args)
    if len(numbers) > MAX_RANGE:
        raise _limit_error(f"range() of {len(numbers)} items (limit {MAX_RANGE})")
    return numbers


def _with_capped_arguments(jinja_filter: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a size-setting Jinja filter so its width/count/fill arguments stay small."""
    # Jinja passes the environment or eval context first to filters marked with jinja_pass_arg.
    leading = 2 if hasattr(jinja_filter, "jinja_pass_arg") else 1

    @functools.wraps(jinja_filter)  # also copies jinja_pass_arg, so Jinja calls the wrapper the same way
    def capped(*args: Any, **kwargs: Any) -> Any:
        for argument in (*args[leading:], *kwargs.values()):
            size = abs(argument) if _is_int(argument) else len(argument) if isinstance(argument, str) else 0
            if size > MAX_FILTER_ARGUMENT:
                raise _limit_error(f"filter argument above {MAX_FILTER_ARGUMENT}")
        return jinja_filter(*args, **kwargs)

    return capped


def _checked_format(jinja_format: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(jinja_format)
    def checked(value: Any, *args: Any, **kwargs: Any) -> str:
        _check_percent_format(value)
        return jinja_format(value, *args, **kwargs)

    return checked


def _checked_replace(jinja_replace: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(jinja_replace)
    def checked(eval_ctx: Any, value: Any, old: Any, new: Any, count: int | None = None) -> str:
        text, old_text, new_text = str(value), str(old), str(new)
        occurrences = text.count(old_text) if old_text else len(text) + 1
        if count is not None and _is_int(count) and count >= 0:
            occurrences = min(occurrences, count)
        _check_size(len(text) + occurrences * max(0, len(new_text) - len(old_text)), "replace() result")
        return jinja_replace(eval_ctx, value, old, new, count)

    return checked


def _checked_join(jinja_join: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(jinja_join)
    def checked(eval_ctx: Any, value: Iterable[Any], d: str = "", attribute: Any = None) -> str:
        items = list(value)
        separator = str(d)
        _check_size(sum(len(str(item)) for item in items) + len(separator) * max(0, len(items) - 1), "join() result")
        return jinja_join(eval_ctx, items, d, attribute)

    return checked


# pass_context (unused) keeps Jinja from constant-folding `{{ '+15551234567' | phone }}` at compile
# time, when no account region is known yet.
@pass_context
def _phone(context: Any, value: Any, style: str | None = None) -> Any:
    """Format a phone number for people; values that are not phone numbers come back unchanged."""
    if style is not None and style not in _PHONE_FORMATS:
        raise TemplateError(f"phone: unknown format {style!r} (use e164, international or national)",
                            code="template")
    if value is None or isinstance(value, bool) or not isinstance(value, (str, int)):
        return value
    region = _render_state.get().region
    try:
        number = phonenumbers.parse(str(value), region)
    except phonenumbers.NumberParseException:
        return value
    if not phonenumbers.is_possible_number(number):
        return value  # extensions like "1001", short codes
    if style is None:
        style = "national" if number.country_code == phonenumbers.country_code_for_region(region) else "international"
    return phonenumbers.format_number(number, _PHONE_FORMATS[style])


@pass_context  # see _phone: the time zone is only known at render time
def _localtime(context: Any, value: Any, time_format: str = DEFAULT_LOCALTIME_FORMAT) -> Any:
    """Show an ISO timestamp or datetime in the account's time zone; anything else comes back unchanged."""
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        return value
    return aware(moment).astimezone(ZoneInfo(_render_state.get().timezone)).strftime(str(time_format))


def _duration(value: Any) -> Any:
    """Seconds as "42s", "1m 05s" or "1h 02m 03s"; non-numbers and negatives come back unchanged."""
    if isinstance(value, bool):
        return value
    try:
        total = round(float(value))
    except (TypeError, ValueError, OverflowError):
        return value
    if total < 0:
        return value
    hours, remainder = divmod(total, 3600)
    minutes, seconds = divmod(remainder, 60)
    if hours:
        return f"{hours}h {minutes:02d}m {seconds:02d}s"
    if minutes:
        return f"{minutes}m {seconds:02d}s"
    return f"{seconds}s"


def _none_as_empty(value: Any) -> Any:
    return "" if value is None else value


def _build_environment() -> _GuardedEnvironment:
    environment = _GuardedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False, finalize=_none_as_empty,
                                      keep_trailing_newline=True, cache_size=0)
    del environment.globals["lipsum"]  # lipsum(n=10**9) loops in Python, outside the step counter
    environment.globals["range"] = _bounded_range
    filters = environment.filters
    for name in _SIZE_ARGUMENT_FILTERS:
        filters[name] = _with_capped_arguments(filters[name])
    filters["format"] = _checked_format(filters["format"])
    filters["replace"] = _checked_replace(filters["replace"])
    filters["join"] = _checked_join(filters["join"])
    filters.update({"phone": _phone, "localtime": _localtime, "duration": _duration})
    for name, function in filters.items():
        filters[name] = _budgeted(function, f"filter {name}", itemwise=name in _ITEMWISE_FILTERS)
    for name, function in environment.tests.items():
        environment.tests[name] = _budgeted(function, f"test {name}")
    # The guards count steps themselves; budgeting them again would count every loop item twice.
    filters.update({_COUNTED_ITERATION: _counted_iteration, _CHECKED_CONCAT: _checked_concat})
    return environment


_ENVIRONMENT = _build_environment()


def _short(text: str) -> str:
    return text if len(text) <= MAX_ERROR_CHARS else text[:MAX_ERROR_CHARS] + "..."


@functools.lru_cache(maxsize=TEMPLATE_CACHE_SIZE)
def _compiled(source: str) -> jinja2.Template:
    """The compiled template for ``source`` (cached), or TemplateError."""
    try:
        return _ENVIRONMENT.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(_short(f"syntax error on line {exc.lineno}: {exc.message}"), code="template") from None
    except RecursionError:
        raise TemplateError("syntax error: template is nested too deeply", code="template") from None


def compile_check(source: str) -> None:
    """Compile ``source`` now so syntax errors surface when rules load; raises TemplateError."""
    _compiled(source)


def render_template(source: str, context: dict[str, Any], *, timezone: str = "UTC", region: str = "US",
                    deadline: float | None = None) -> str:
    """Render ``source`` with ``context`` in the sandbox, by ``deadline`` (default: render_deadline())."""
    template = _compiled(source)
    state = _RenderState(timezone=timezone, region=region, deadline=deadline or render_deadline())
    token = _render_state.set(state)
    pieces: list[str] = []
    size = 0
    try:
        for piece in template.generate(context):
            size += len(piece)
            if size > MAX_OUTPUT_CHARS:
                raise _limit_error(f"output longer than {MAX_OUTPUT_CHARS} characters")
            pieces.append(piece)
    except TemplateError:
        raise
    except jinja2.TemplateError as exc:  # undefined names, sandbox refusals, bad filter arguments
        raise TemplateError(_short(exc.message or type(exc).__name__), code="template") from None
    except _TEMPLATE_FAULTS as exc:  # a template is user code: 1/0, 'a' + 1... are its errors, not ours
        raise TemplateError(_short(f"{type(exc).__name__}: {exc}"), code="template") from None
    finally:
        _render_state.reset(token)
    return "".join(pieces)


def event_context(event: Event, *, account_id: str, account_name: str, timezone: str) -> dict[str, Any]:
    """The names a template sees: the event's data plus event, account and occurred_at."""
    return {
        **event.data,
        "event": {"type": event.type, "key": event.key},
        "account": {"id": account_id, "name": account_name, "timezone": timezone},
        "occurred_at": event.occurred_at,
    }
