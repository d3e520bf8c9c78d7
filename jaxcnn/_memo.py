"""One memo for the few pure functions a fit calls more than once with equal arguments."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any


def memo_if_hashable(maxsize: int) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``functools.lru_cache(maxsize)`` for calls whose arguments hash; a call with an unhashable
    argument (a module attribute holding an array, say) runs uncached. Hashing is checked before
    the call, so a ``TypeError`` raised by the function itself propagates once, unretried."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        cached = functools.lru_cache(maxsize=maxsize)(fn)

        @functools.wraps(fn)
        def call(*args: Any) -> Any:
            try:
                hash(args)
            except TypeError:
                return fn(*args)
            return cached(*args)

        call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
        return call

    return wrap
