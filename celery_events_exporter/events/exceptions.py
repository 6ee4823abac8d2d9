"""The exception class of a failed or retried task, read from the exception text Celery sends.

Celery's ``task-failed`` and ``task-retried`` carry ``exception`` as the ``repr`` of the
exception (``ValueError('lifespan must be positive')``): the class is the name before the
parenthesis. The message after it is a payload (it often holds an e-mail address, a card number
or a token), so only the class is used as a label or shown by default. Shared by the state (the
``exception`` label of ``celery_task_exceptions_total``) and the Tasks API (``exception_type``),
so that both name a failure the same way.
"""

from __future__ import annotations

import re
from typing import Any

UNKNOWN_EXCEPTION = "unknown"
"""The class of an exception text that names none (absent, not a string, or a custom repr)."""

REJECT = "Reject"
"""celery.exceptions.Reject: Celery 5.7 sends ``task-failed`` with ``reject requeue=False:
REASON`` (Reject's own ``__repr__``) before ``task-rejected``."""

MAX_EXCEPTION_CLASS_LENGTH = 200
"""Characters of a class name kept (a dotted path included); the rest is cut, so that a crafted
exception text cannot make a label value of any length."""

# A class name followed by the call's parenthesis, a colon ("Error: message", the str() form) or
# nothing; a bare first word of a message ("boom happened") names no class.
_CLASS_CALL = re.compile(r"\s*([A-Za-z_][\w.]*)\s*(?:[(:]|$)")
# An object's default repr: <module.Class object at 0x7f...>.
_OBJECT_REPR = re.compile(r"\s*<([A-Za-z_][\w.]*)[\s>]")
_REJECT_REPR = re.compile(r"\s*reject requeue=(?:True|False)\b")


def exception_class(exception: Any) -> str:
    """The class name an exception text starts with, ``"Reject"`` for Celery's Reject, or
    ``UNKNOWN_EXCEPTION``. Looks at the first characters only: cheap on any input."""
    if type(exception) is not str or not exception:
        return UNKNOWN_EXCEPTION
    head = exception[: MAX_EXCEPTION_CLASS_LENGTH + 64]
    if _REJECT_REPR.match(head):
        return REJECT
    match = _CLASS_CALL.match(head) or _OBJECT_REPR.match(head)
    if match is None:
        return UNKNOWN_EXCEPTION
    return match.group(1)[:MAX_EXCEPTION_CLASS_LENGTH]
