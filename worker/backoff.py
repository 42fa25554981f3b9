"""Exponential backoff with jitter and a cap (pure: the caller supplies the random source)."""
from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, jitter: float = 0.1,
                  rng: random.Random | None = None) -> float:
    """Delay before try ``attempt`` (1 = first retry): ``base * 2**(attempt-1)``, capped, +/- jitter.

    ``jitter`` is a fraction of the delay (0.1 = up to 10 % either way); the result never exceeds
    ``cap * (1 + jitter)`` and is never negative.
    """
    if attempt < 1 or base <= 0:
        return 0.0
    delay = min(cap, base * 2.0 ** min(attempt - 1, 62))
    if jitter:
        delay *= 1.0 + (rng or random).uniform(-jitter, jitter)
    return max(0.0, delay)
