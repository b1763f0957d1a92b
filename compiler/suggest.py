"""Did-you-mean suggestions for misspelt names and keys.

>>> did_you_mean("featurs", ["features", "transactions"])
" (did you mean 'features'?)"
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """A suffix naming the closest candidate, or an empty string when none is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
