"""Mask secrets in task payloads and cut long ones, at serving time.

Celery sends args, kwargs and results as Python repr strings (``argsrepr``/``kwargsrepr``, up to
1024 characters), not as data. A repr that is a Python literal is parsed with ``ast.literal_eval``
and every value under a secret-looking key is replaced, at any depth; a repr that is not a literal
(an object's repr, or one Celery cut short with ``...``) falls back to a scanner that masks
``'key': value`` and ``key=value`` pairs in the text. Either way, a password in a URL
(``scheme://user:password@host``) is masked too.

Keys are matched, never values: a secret passed positionally (``args=('hunter2',)``) cannot be
recognised, which is why payloads are not served unless the operator asks for them.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MASK = "********"
ELLIPSIS = "…"

DEFAULT_SECRET_KEY_PATTERNS: tuple[str, ...] = (
    r"passw(or)?d",
    r"pwd",
    r"token",
    r"secret",
    r"api[-_\s]?key",
    r"authori[sz]ation",
    r"(^|[-_\s])auth($|[-_\s])",
    r"cookie",
    r"session",
    r"credential",
    r"private[-_\s]?key",
    r"signature",
)
"""Matched (searched, case-insensitively) against dict keys and keyword names. No spaces in them:
the environment variable twin of --secret-key-pattern separates patterns with spaces."""

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]*://[^\s:/@'\"]*:)[^\s@/'\"]+@")
# A key, quoted or bare, followed by ':' (dict) or '=' (keyword argument in an object's repr).
_KEY_VALUE = re.compile(
    r"""(?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|\b[A-Za-z_][\w-]*)\s*(?P<sep>:|=)\s*"""
)
_CLOSERS = {"(": ")", "[": "]", "{": "}"}


def compile_secret_keys(patterns: Iterable[str]) -> re.Pattern[str]:
    """One case-insensitive regex out of several; raises ValueError on a bad pattern."""
    parts = list(patterns)
    if not parts:
        raise ValueError("at least one secret key pattern is needed")
    for part in parts:
        try:
            re.compile(part)
        except re.error as exc:
            raise ValueError(f"bad secret key pattern {part!r}: {exc}") from None
    return re.compile("|".join(f"(?:{part})" for part in parts), re.IGNORECASE)


@dataclass(frozen=True)
class Redactor:
    secret_keys: re.Pattern[str]
    max_length: int

    def payload(self, value: Any) -> str:
        """A task's args, kwargs or result, masked, as text, cut to ``max_length``."""
        if value is None:
            return ""
        return self.truncate(self.mask(value))

    def mask(self, value: Any) -> str:
        if not isinstance(value, str):
            # Old protocol-1 clients send JSON data instead of reprs.
            return self._mask_urls(repr(self._mask_data(value)))
        try:
            parsed = ast.literal_eval(value)
        except Exception:  # not a literal (or too deep for the parser): mask the text
            return self.mask_text(value)
        masked = self._mask_data(parsed)
        return self._mask_urls(value if masked == parsed else repr(masked))

    def mask_text(self, text: str) -> str:
        """Mask ``key: value`` and ``key=value`` pairs of secret-looking keys in free text."""
        out: list[str] = []
        emitted = 0
        search_from = 0
        while True:
            match = _KEY_VALUE.search(text, search_from)
            if match is None:
                break
            if not self.secret_keys.search(match["key"].strip("'\"")):
                # Not a secret: look on from its separator, into its value too (a string
                # value may itself hold "password=...").
                search_from = match.start("sep") + 1
                continue
            start = match.end()
            end = _value_end(text, start)
            out.append(text[emitted:start])
            if end > start:
                quote = text[start] if text[start] in "'\"" else ""
                out.append(f"{quote}{MASK}{quote}")
            emitted = search_from = end
        out.append(text[emitted:])
        return self._mask_urls("".join(out))

    def truncate(self, text: str) -> str:
        if len(text) <= self.max_length:
            return text
        return text[: self.max_length] + ELLIPSIS

    def truncate_tail(self, text: str) -> str:
        """For tracebacks: the last frames and the exception line are the useful part."""
        if len(text) <= self.max_length:
            return text
        return ELLIPSIS + text[-self.max_length :]

    def _mask_data(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                key: MASK
                if isinstance(key, str) and self.secret_keys.search(key)
                else self._mask_data(item)
                for key, item in value.items()
            }
        if isinstance(value, list):
            return [self._mask_data(item) for item in value]
        if isinstance(value, tuple):
            return tuple(self._mask_data(item) for item in value)
        if isinstance(value, str) and "://" in value:
            return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", value)
        return value

    @staticmethod
    def _mask_urls(text: str) -> str:
        return _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text) if "://" in text else text


def _value_end(text: str, start: int) -> int:
    """Index just past the value that begins at ``start``: a quoted string, a bracketed group
    (brackets inside strings ignored), or a bare token; the end of the text if it was cut."""
    length = len(text)
    if start >= length:
        return start
    first = text[start]
    if first in "'\"":
        index = start + 1
        while index < length:
            char = text[index]
            if char == "\\":
                index += 2
                continue
            if char == first:
                return index + 1
            index += 1
        return length
    stack: list[str] = []
    quote = ""
    index = start
    while index < length:
        char = text[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char in _CLOSERS:
            stack.append(_CLOSERS[char])
        elif stack and char == stack[-1]:
            stack.pop()
            if not stack and first in _CLOSERS:
                return index + 1
        elif not stack and (char in ",)]}" or char.isspace()):
            return index
        index += 1
    return length
