"""The search box of ``/api/tasks?search=``: Flower's terms and a few more, AND-ed.

``state:FAILURE`` (several with commas), ``name:tasks.add`` (exact; ``name:tasks.*`` a prefix),
``uuid:1f2e`` (a prefix), ``worker:celery@host`` (exact; ``*`` at the end a prefix),
``exception:ValueError`` (the class), ``result:TEXT``, ``args:TEXT``, ``kwargs:key=value`` and
free text (contained in the name, state, worker, exception class, args, kwargs or result, or
the start of the uuid).
A value with spaces is quoted (``name:"my task"``, ``"two words"``); ``-term`` negates a term.
Flower ORs its terms; here every term must hold, so each added term narrows the answer.
"""

from __future__ import annotations

from dataclasses import dataclass

FIELDS = ("state", "name", "uuid", "worker", "exception", "result", "args", "kwargs")
MAX_TERMS = 16
MAX_SEARCH_LENGTH = 1024


class SearchError(ValueError):
    """A search that cannot be read; the message says why."""


@dataclass(frozen=True)
class Term:
    field: str
    """One of ``FIELDS``, or ``"any"`` for free text."""
    value: str
    negated: bool = False


def tokens(text: str) -> list[str]:
    """Split at blanks outside double quotes; the quotes are dropped."""
    out: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for char in text:
        if char == '"':
            quoted = not quoted
            started = True
        elif char.isspace() and not quoted:
            if started:
                out.append("".join(current))
            current, started = [], False
        else:
            current.append(char)
            started = True
    if quoted:
        raise SearchError("search has an unclosed double quote")
    if started:
        out.append("".join(current))
    return out


def parse(text: str) -> list[Term]:
    """The terms of a search; raises ``SearchError`` for an unknown field or a bad value."""
    if len(text) > MAX_SEARCH_LENGTH:
        raise SearchError(f"search is longer than {MAX_SEARCH_LENGTH} characters")
    terms: list[Term] = []
    for token in tokens(text):
        negated = token.startswith("-") and len(token) > 1
        body = token[1:] if negated else token
        field, sep, value = body.partition(":")
        if sep and field.lower() in FIELDS:
            field = field.lower()
            if not value:
                raise SearchError(f"search term {token!r} has no value")
            if field == "kwargs" and "=" not in value:
                raise SearchError(f"kwargs terms are kwargs:key=value, got {token!r}")
        else:
            field, value = "any", body
        if value:
            terms.append(Term(field, value, negated))
    if len(terms) > MAX_TERMS:
        raise SearchError(f"search has more than {MAX_TERMS} terms")
    return terms
