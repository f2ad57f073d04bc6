"""Reject config keys that nothing reads, with a suggestion for typos."""

import difflib
from typing import Iterable


def check_keys(section, allowed: Iterable[str], where: str) -> None:
    """Raise ``ValueError`` if ``section`` (a dict or OmegaConf node) has keys outside ``allowed``."""
    allowed = set(allowed)
    unknown = sorted(str(k) for k in section.keys() if str(k) not in allowed)
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, allowed, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    raise ValueError(
        f"Unknown key(s) in {where}: {', '.join(hints)}. Valid keys: {', '.join(sorted(allowed))}"
    )
