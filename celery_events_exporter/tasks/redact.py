"""Mask secrets in task payloads and cut long ones, at serving time.

Celery sends args, kwargs and results as Python repr strings (``argsrepr``/``kwargsrepr``, up to
1024 characters), not as data. A repr that is a Python literal is parsed with ``ast.literal_eval``
and every value under a secret-looking key is replaced, at any depth; a repr that is not a literal
(an object's repr, or one Celery cut short with ``...``) falls back to a scanner that masks
``'key': value``, ``key=value``, ``'--flag', value`` and ``--flag value`` in the text. Parsed
data is masked under secret-looking dict keys, after a secret-looking first item of a pair
(``('Authorization', 'Bearer X')``) or ``--flag`` item of a list, and every string in it goes
through the scanner (a JSON document or ``key=value`` text inside a string). Either way,
credentials recognisable by their shape are masked too: a password in a URL
(``scheme://user:password@host``), ``Bearer``/``Basic`` values, JSON Web Tokens.

Names are matched, not meaning: a secret passed positionally (``args=('hunter2',)``) cannot be
recognised, which is why payloads are not served unless the operator asks for them
(docs/security.md lists what masking cannot catch).
"""

from __future__ import annotations

import ast
import re
from bisect import bisect_right
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

MASK = "********"
ELLIPSIS = "…"

DEFAULT_SECRET_KEY_PATTERNS: tuple[str, ...] = (
    r"passw(or)?[dt]",
    r"passphrase",
    r"(^|[-_\s])pass($|[-_\s])",
    r"mot[-_\s]?de[-_\s]?passe",
    r"pwd",
    r"token",
    r"secret",
    r"api[-_\s]?key",
    r"access[-_\s]?key",
    r"signing[-_\s]?key",
    r"private[-_\s]?key",
    r"auth[-_\s]?key",
    r"authori[sz]ation",
    r"(^|[-_\s])auth($|[-_\s])",
    r"bearer",
    r"jwt",
    r"(^|[-_\s])otp($|[-_\s])",
    r"(^|[-_\s])pin($|[-_\s])",
    r"refresh",
    r"cookie",
    r"session",
    r"credential",
    r"signature",
)
"""Matched (searched, case-insensitively) against dict keys, keyword names, the first item of a
key/value pair and command-line flags (without their dashes). Short words (pass, auth, otp, pin)
must stand alone or between -, _ or spaces, so that "passport" or "shipping" stay visible. No
spaces in them: the environment variable twin of --secret-key-pattern separates patterns with
spaces."""

MAX_DEPTH = 64
"""Levels of nesting masked in a payload sent as JSON data; deeper levels are served as "…"."""

MAX_KEY_LENGTH = 64
"""Longest first item of a two-item list that is read as a key (a longer one is a sentence)."""

# Every pattern here runs in time linear in the text, whatever the text: a match attempt may
# only scan what no other attempt scans (a lookbehind keeps a run of word characters to one
# attempt, at its start), or a bounded stretch (a URL's scheme); possessive quantifiers never
# give back. Quoted keys are found by ``_QuotedKeys``, not by a search: an attempt at every
# quote of ``'\'\'\'...`` scanned to the end of the text (quadratic: 60 ms a 4 kB field).
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][\w+.-]{0,31}+://[^\s:/@'\"]*+:)[^\s@/'\"]++@")
# Credentials recognised by their shape, under any key or none: an HTTP Authorization value and
# a JSON Web Token.
_CREDENTIAL_VALUE = re.compile(
    r"(?P<head>\b(?:Bearer|Basic|Token|Digest)\s++)[A-Za-z0-9._~+/=-]{8,}+"
    r"|(?<![\w-])eyJ[\w-]{4,}+\.[\w-]{4,}+\.[\w-]*+"
)
# Where a secret may follow its name in text:
# - word: a bare --flag then blanks (a command line);
# - key: a key, quoted (``_QuotedKeys``) or bare, then ':' (a dict) or '=' (a keyword argument,
#   --flag=value); a bare key is tried once per run of word characters and dashes, from its first
#   word boundary (every later start would end where it ends);
# - flag: a quoted --flag item of a list, then ',' (the value is the next item).
# A word is tried first: it can only start a run, where the bare key's search would otherwise
# claim the run's start for a key further in ("-pwd :" is the flag -pwd with the value ":").
_SECRET_SITE = re.compile(
    r"""(?<![\w-])(?P<word>--?[A-Za-z][\w-]*+)[ \t]++"""
    r"""|(?<![\w-])(?>[\w-]*?\b(?=[A-Za-z_]))(?P<key>[A-Za-z_][\w-]*+)\s*+(?P<sep>:|=)\s*+"""
    r"""|(?P<flag>(?P<quote>['"])--?[A-Za-z][\w-]*+(?P=quote))\s*+,\s*+"""
)
_QUOTED = {quote: re.compile(rf"{quote}(?:[^{quote}\\]|\\.)*+{quote}") for quote in ("'", '"')}
"""A quoted string from its opening quote, escapes honoured."""
_KEY_SEPARATOR = re.compile(r"\s*+(?P<sep>:|=)\s*+")


@dataclass(frozen=True)
class _Site:
    """Where a secret may follow its name: the name (``group`` says which kind), where the
    separator starts (keys) and where the value starts."""

    start: int
    group: str
    name: str
    sep: int
    end: int


class _QuotedKeys:
    """Quoted keys (``'name': value``, ``"name"=value``) in one pass over the text.

    A search tries a quoted key at every quote; from an escaped quote inside a string it reads
    on in step with the string it is in, to the same closing quote: every quote of a string
    shares its end and what follows it. So the strings are read once, each from the previous
    one's closing quote, and a key found at the first quote at or after any position."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.keyed: dict[str, list[tuple[int, int, int, int]]] = {}
        """quote -> (first quote, closing quote, separator start, value start) of each string
        followed by a separator, in order."""
        for quote, pattern in _QUOTED.items():
            keyed: list[tuple[int, int, int, int]] = []
            start = text.find(quote)
            while start != -1:
                string = pattern.match(text, start)
                if string is None:  # unclosed: so is every later string of this quote
                    break
                close = string.end() - 1
                separator = _KEY_SEPARATOR.match(text, close + 1)
                if separator is not None:
                    keyed.append((start, close, separator.start("sep"), separator.end()))
                start = close
            self.keyed[quote] = keyed

    def at_or_after(self, position: int) -> _Site | None:
        best: _Site | None = None
        for quote, keyed in self.keyed.items():
            index = bisect_right(keyed, position, key=lambda item: item[1])
            while index < len(keyed):
                first, close, sep, end = keyed[index]
                start = first if position <= first else self.text.find(quote, position, close)
                if start != -1:
                    if best is None or start < best.start:
                        best = _Site(start, "key", self.text[start : close + 1], sep, end)
                    break
                index += 1
        return best


_CLOSERS = {"(": ")", "[": "]", "{": "}"}
_BARE_TOKEN_ENDS = frozenset(",;&)]}>'\"\\ \t\r\n")
_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


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


def secret_key_patterns(extra: Iterable[str], *, defaults: bool = True) -> tuple[str, ...]:
    """The patterns in force: the defaults (unless turned off) followed by ``extra``."""
    return (*(DEFAULT_SECRET_KEY_PATTERNS if defaults else ()), *extra)


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
            return _mask_values(repr(self._mask_data(value, 0)))
        try:
            parsed = ast.literal_eval(value)
        except Exception:  # not a literal (or too deep for the parser): mask the text
            return self.mask_text(value)
        masked = self._mask_data(parsed, 0)
        return _mask_values(value if masked == parsed else repr(masked))

    def mask_text(self, text: str) -> str:
        """Mask the values of secret-looking keys in free text: ``key: value``,
        ``key=value``, ``'--key', value`` and ``--key value``; credentials by their shape."""
        out: list[str] = []
        emitted = 0
        search_from = 0
        is_secret = self.is_secret_key
        quoted = _QuotedKeys(text) if "'" in text or '"' in text else None
        # The next site of each kind, kept while it lies ahead: searched again only once the
        # search has moved past it, so that no stretch of the text is searched twice.
        bare: _Site | None = _site(text, 0)
        key: _Site | None = None if quoted is None else quoted.at_or_after(0)
        while True:
            if bare is not None and bare.start < search_from:
                bare = _site(text, search_from)
            if key is not None and key.start < search_from:
                assert quoted is not None
                key = quoted.at_or_after(search_from)
            site = key if key is not None and (bare is None or key.start <= bare.start) else bare
            if site is None:
                break
            if not is_secret(site.name):
                # Not a secret: look on past its name, into its value too (a string value may
                # itself hold "password=...").
                search_from = site.sep + 1 if site.group == "key" else site.sep
                continue
            start = site.end
            end = _value_end(text, start)
            out.append(text[emitted:start])
            if end > start:
                quote = text[start] if text[start] in "'\"" else ""
                out.append(f"{quote}{MASK}{quote}")
            emitted = search_from = end
        out.append(text[emitted:])
        return _mask_values("".join(out))

    def is_secret_key(self, key: str) -> bool:
        """Whether a key, keyword or flag (quotes and leading dashes aside) looks secret; a
        camelCase key is read as words too (userPin as user_Pin)."""
        name = key.strip("'\"").lstrip("-")
        if self.secret_keys.search(name) is not None:
            return True
        words = _CAMEL_HUMP.sub("_", name)
        return words != name and self.secret_keys.search(words) is not None

    def truncate(self, text: str) -> str:
        if len(text) <= self.max_length:
            return text
        return text[: self.max_length] + ELLIPSIS

    def truncate_tail(self, text: str) -> str:
        """For tracebacks: the last frames and the exception line are the useful part."""
        if len(text) <= self.max_length:
            return text
        return ELLIPSIS + text[-self.max_length :]

    def _mask_data(self, value: Any, depth: int) -> Any:
        if isinstance(value, str):
            return self.mask_text(value)
        if depth >= MAX_DEPTH:
            return ELLIPSIS if isinstance(value, (dict, list, tuple)) else value
        if isinstance(value, dict):
            return {
                key: MASK
                if isinstance(key, str) and self.is_secret_key(key)
                else self._mask_data(item, depth + 1)
                for key, item in value.items()
            }
        if isinstance(value, (list, tuple)):
            items = [self._mask_data(item, depth + 1) for item in value]
            for index in range(len(items) - 1):
                # ('Authorization', 'Bearer X') or '--password', 'X': the item after a
                # secret-looking name is its value.
                name = value[index]
                if (
                    isinstance(name, str)
                    and (len(value) == 2 or name.startswith("-"))
                    and len(name) <= MAX_KEY_LENGTH
                    and "=" not in name
                    and self.is_secret_key(name)
                ):
                    items[index + 1] = MASK
            return items if isinstance(value, list) else tuple(items)
        return value


def _site(text: str, position: int) -> _Site | None:
    """The first unquoted key, quoted --flag item or bare --flag at or after ``position``
    (``sep`` is where the search goes on from when its name is not secret)."""
    match = _SECRET_SITE.search(text, position)
    if match is None:
        return None
    group = "key" if match["key"] else "flag" if match["flag"] else "word"
    sep = match.start("sep") if group == "key" else match.end(group)
    return _Site(match.start(group), group, match[group], sep, match.end())


def _mask_values(text: str) -> str:
    """Mask what is secret by its shape: a URL's password, an Authorization value, a JWT."""
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}@", text)
    return _CREDENTIAL_VALUE.sub(_credential_mask, text)


def _credential_mask(match: re.Match[str]) -> str:
    return f"{match['head'] or ''}{MASK}"


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
    index = start
    if first not in _CLOSERS:
        # A bare token (password=hunter2 inside a message) ends where the string around it
        # does, or at a separator; a call or subscript in it (Session(id=3)) is read whole.
        while index < length and text[index] not in _BARE_TOKEN_ENDS:
            if text[index] in _CLOSERS:
                break
            index += 1
        else:
            return index
    stack: list[str] = []
    quote = ""
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
