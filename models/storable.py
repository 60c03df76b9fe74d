"""Text that every database we support will store."""

from __future__ import annotations

import re

_UNSTORABLE = re.compile("[\\x00\\ud800-\\udfff]")


def storable_text(text: str) -> str:
    """An error message (from an action, a library, a remote server) may hold NUL, which
    PostgreSQL refuses in text, or lone surrogates, which are not UTF-8. Either would fail the
    write that records it and leave its execution stuck; each becomes U+FFFD instead."""
    if text.isascii():
        return text.replace("\x00", "\ufffd")
    return _UNSTORABLE.sub("\ufffd", text)
