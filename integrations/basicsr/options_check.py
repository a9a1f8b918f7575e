"""Option checks that name the offending key, for the BasicSR option files."""

from __future__ import annotations

import difflib
from typing import Iterable, Mapping


class OptionError(ValueError):
    """An option file asks for something the DR-IQA integration cannot do."""


def check_keys(options: Mapping[str, object], known: Iterable[str], where: str) -> None:
    """Raise :class:`OptionError` naming every key of ``options`` that is not in ``known``."""
    known = tuple(known)
    unknown = [key for key in options if key not in known]
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), known, n=1)
        hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
    raise OptionError(f"unknown option key {', '.join(hints)} in {where}; known keys: {', '.join(known)}")
