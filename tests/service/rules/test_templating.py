"""Tests for service.templating: context, filters, strictness, the sandbox and its resource limits."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from integrations.base import PermanentError
from service.events import Event
from service.rules import templating
from service.rules.templating import TemplateError, compile_check, event_context, render_template

CONTEXT = {
    "caller": {"name": "Bob Smith", "number": "15551234567"},
    "callee": {"number": "+442079460958"},
    "owner_id": None,
    "duration": 65,
    "started": "2024-03-11T12:45:00Z",
    "occurred_at": datetime(2024, 1, 15, 18, 0, tzinfo=timezone.utc),
}


@pytest.mark.parametrize(("source", "expected"), [
    ("Missed call from {{ caller.name }}", "Missed call from Bob Smith"),
    ("[{{ owner_id }}]", "[]"),
    ("{{ caller.number | phone }}", "(555) 123-4567"),
    ("{{ '+15551234567' | phone }}", "(555) 123-4567"),
    ("{{ '5551234567' | phone }}", "(555) 123-4567"),
    ("{{ callee.number | phone }}", "+44 20 7946 0958"),
    ("{{ caller.number | phone('e164') }}", "+15551234567"),
    ("{{ caller.number | phone('international') }}", "+1 555-123-4567"),
    ("{{ callee.number | phone('national') }}", "020 7946 0958"),
    ("{{ 'anonymous' | phone }}", "anonymous"),
    ("{{ '1001' | phone }}", "1001"),
    ("{{ owner_id | phone }}", ""),
    ("{{ started | localtime }}", "Mon Mar 11, 8:45 AM EDT"),
    ("{{ occurred_at | localtime }}", "Mon Jan 15, 1:00 PM EST"),
    ("{{ '2024-01-15T18:00:00' | localtime('%H:%M %Z') }}", "13:00 EST"),
    ("{{ 'yesterday' | localtime }}", "yesterday"),
    ("{{ 42 | duration }}", "42s"),
    ("{{ 0 | duration }}", "0s"),
    ("{{ duration | duration }}", "1m 05s"),
    ("{{ 3723 | duration }}", "1h 02m 03s"),
    ("{{ '75' | duration }}", "1m 15s"),
    ("{{ 59.6 | duration }}", "1m 00s"),
    ("{{ -5 | duration }}", "-5"),
    ("{{ 'n/a' | duration }}", "n/a"),
    ("<b>{{ '<&>' }}</b>", "<b><&></b>"),
    ("{{ missing | default('none') }}", "none"),
    ("{% if missing is defined %}yes{% else %}no{% endif %}", "no"),
    ("{{ caller.name ~ ' / ' ~ duration }}", "Bob Smith / 65"),
    ("{% for part in caller.name.split() %}{{ loop.index }}{{ part }}{% else %}none{% endfor %}", "1Bob2Smith"),
    ("{{ ['a', 'b'] | join(', ') }}", "a, b"),
    ("{{ 'a-b' | replace('-', '+') }}", "a+b"),
    ("{{ '%05d' | format(42) }}", "00042"),
    ("{{ 'x' | center(5) }}", "  x  "),
], ids=lambda value: value if isinstance(value, str) and "{" in value else None)
def test_renders(source, expected):
    """Each template renders as expected for a US account in New York."""
    assert render_template(source, CONTEXT, timezone="America/New_York", region="US") == expected


@pytest.mark.parametrize(("source", "region", "expected"), [
    ("{{ '+442079460958' | phone }}", "GB", "020 7946 0958"),
    ("{{ '02079460958' | phone }}", "GB", "020 7946 0958"),
    ("{{ '+15551234567' | phone }}", "GB", "+1 555-123-4567"),
    ("{{ '+33142685300' | phone }}", "FR", "01 42 68 53 00"),
], ids=["gb-national", "gb-local-digits", "us-from-gb", "fr-national"])
def test_phone_outside_the_us(source, region, expected):
    """Numbers of the account's region are national, others international, whatever the region."""
    assert render_template(source, {}, region=region) == expected


@pytest.mark.parametrize(("source", "message"), [
    ("{{ nobody }}", "'nobody' is undefined"),
    ("{{ caller.nmae }}", "has no attribute 'nmae'"),
    ("{{ owner_id.name }}", "has no attribute 'name'"),
    ("{{ 1 / 0 }}", "ZeroDivisionError"),
    ("{{ caller.number | phone('fancy') }}", "unknown format 'fancy'"),
    ("{{ caller.name }", "syntax error on line 1"),
    ("line one\n{% for x in y %}", "syntax error on line 2"),
    ("{{ x | no_such_filter }}", "No filter named 'no_such_filter'"),
], ids=["undefined-name", "undefined-attribute", "attribute-of-none", "runtime-error", "bad-filter-argument",
        "syntax", "syntax-line-2", "unknown-filter"])
def test_template_errors(source, message):
    """Strict undefined names, runtime errors and syntax errors are TemplateErrors (PermanentErrors)."""
    with pytest.raises(TemplateError) as caught:
        render_template(source, CONTEXT)
    assert message in str(caught.value)
    assert isinstance(caught.value, PermanentError) and not caught.value.retryable


@pytest.mark.parametrize(("source", "message"), [
    ("{{ ''.__class__.__mro__ }}", "unsafe"),
    ("{{ cycler.__init__.__globals__ }}", "unsafe"),
    ("{{ caller.__class__ }}", "unsafe"),
    ("{{ 'abc'.format }}", "unsafe"),
    ("{{ '{:999999999}'.format(1) }}", "unsafe"),
    ("{{ 'x'.ljust(999999999) }}", "unsafe"),
    ("{{ [].append(1) }}", "unsafe"),
    ("{{ range(10**9) }}", "range() of 1000000000 items"),
    ("{{ range(10**9) | list }}", "range() of 1000000000 items"),
    ("{{ 'x' * 999999999 }}", "repeated value"),
    ("{{ [0] * 999999999 }}", "repeated value"),
    ("{{ 2 ** 99999999 }}", "integer power"),
    ("{{ '%999999999s' % 1 }}", "format width"),
    ("{{ '%*s' % (999999999, 1) }}", "format width"),
    ("{{ '%999999999s' | format(1) }}", "format width"),
    ("{{ 'x' | center(999999999) }}", "filter argument"),
    ("{{ 'a\nb' | indent(999999999) }}", "filter argument"),
    ("{{ ['x'] | map('center', 999999999) | list }}", "filter argument"),
    ("{{ lipsum(999999999) }}", "'lipsum' is undefined"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "concatenation"),
    ("{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "concatenation"),
    ("{% set ns = namespace(s='x' * 1000) %}{% for i in range(9) %}{% set ns.s = ns.s | replace('x', 'xx') %}"
     "{% endfor %}", "replace() result"),
    ("{{ range(1000) | join('x' * 1000) }}", "join() result"),
    ("{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}", "loop iterations and calls"),
    # Macro calls are slow enough that, on a busy machine, the time budget may run out before the steps.
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(40) }}",
     ("loop iterations and calls", "ran out of time")),
    ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    ("{% for i in range(2000) %}{{ 'x' * 100 }}{% endfor %}", "output longer than 100000"),
], ids=["str-mro", "cycler-globals", "dict-class", "str-format", "str-format-width", "str-ljust", "list-append",
        "huge-range", "huge-range-list", "str-times", "list-times", "int-power", "percent-width", "percent-star",
        "format-filter", "center", "indent", "map-center", "lipsum", "concat-doubling", "plus-doubling",
        "replace-growth", "join-growth", "nested-loops", "macro-fan-out", "macro-recursion", "output-cap"])
def test_sandbox_and_limits(source, message):
    """Escapes and resource bombs fail fast with a TemplateError instead of running or hanging."""
    with pytest.raises(TemplateError) as caught:
        render_template(source, CONTEXT)
    assert any(each in str(caught.value) for each in ((message,) if isinstance(message, str) else message))


def test_output_at_the_cap_renders():
    """The output cap is a limit, not an off-by-one: exactly MAX_OUTPUT_CHARS characters render."""
    source = "{% for i in range(1000) %}{{ 'x' * 100 }}{% endfor %}"
    assert len(render_template(source, {})) == templating.MAX_OUTPUT_CHARS


def test_compile_check():
    """compile_check accepts good templates and names the line of a syntax error."""
    compile_check("Hello {{ caller.name | upper }}")  # unknown names are fine until render time
    with pytest.raises(TemplateError, match="syntax error on line 3"):
        compile_check("a\nb\n{% if %}")


def test_compiled_templates_are_cached():
    """Rendering the same source again reuses the compiled template."""
    source = "cache probe {{ caller.name }}"
    render_template(source, CONTEXT)
    hits = templating._compiled.cache_info().hits
    render_template(source, CONTEXT)
    assert templating._compiled.cache_info().hits == hits + 1


def test_event_context():
    """The context is the event data plus event, account and occurred_at, which win over data keys."""
    moment = datetime(2024, 3, 11, 12, 45, tzinfo=timezone.utc)
    event = Event(type="call.missed", account_id="a" * 32, key="k1", occurred_at=moment,
                  data={"caller": {"name": "Bob"}, "account": "spoofed", "event": "spoofed"})
    context = event_context(event, account_id="a" * 32, account_name="Acme", timezone="America/New_York")
    assert context == {"caller": {"name": "Bob"}, "event": {"type": "call.missed", "key": "k1"},
                       "account": {"id": "a" * 32, "name": "Acme", "timezone": "America/New_York"},
                       "occurred_at": moment}
    assert render_template("{{ account.name }} {{ event.type }} {{ occurred_at | localtime('%H:%M') }}", context,
                           timezone="America/New_York") == "Acme call.missed 08:45"


def test_template_error_pickles():
    """TemplateError crosses Celery's process boundary intact."""
    import pickle

    error = pickle.loads(pickle.dumps(TemplateError("boom", code="template")))
    assert (type(error), error.message, error.code) == (TemplateError, "boom", "template")


# Fragments that make random strings look like templates often enough to reach the renderer.
TEMPLATE_FRAGMENTS = ["{{", "}}", "{%", "%}", "{#", "#}", " ", "x", "caller", ".", "name", "number", "|", "phone",
                      "duration", "localtime", "('e164')", "(", ")", "[", "]", "0", "9", "**", "*", "+", "-", "~",
                      "'", '"', "%", "for ", " in ", "range(", "endfor", "if ", "endif", "set ", "=", "macro ",
                      "endmacro", "__class__", "loop", "join", "center", "format", "none", "owner_id", ",", ":",
                      "\n", "namespace(", "é"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(TEMPLATE_FRAGMENTS), max_size=30).map("".join) | st.text(max_size=60))
def test_random_templates_only_raise_template_error(source):
    """Whatever the source, compiling and rendering either succeed or raise TemplateError."""
    try:
        compile_check(source)
        rendered = render_template(source, CONTEXT, timezone="America/New_York")
    except TemplateError:
        return
    assert isinstance(rendered, str) and len(rendered) <= templating.MAX_OUTPUT_CHARS
