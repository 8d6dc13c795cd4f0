"""glibc malloc arenas of a gateway process: capped at start, before its threads exist.

glibc gives each new thread that allocates an arena of its own, up to 8 per core; memory one
arena frees stays in it, so a threadpool that handles uploads in turn spreads the same few
hundred KiB per request over many arenas. Two arenas cut the gateway's peak RSS under 64
concurrent uploads by 3-8 MiB (docs/performance.md) at no cost measurable there: its threads
spend their time waiting on the database, not contending in malloc.
"""

from __future__ import annotations

import ctypes
import os

GATEWAY_MALLOC_ARENAS = 2
_ENV = "MALLOC_ARENA_MAX"
_M_ARENA_MAX = -8  # glibc's <malloc.h>


def limit_malloc_arenas(arenas: int = GATEWAY_MALLOC_ARENAS) -> bool:
    """Cap this process's arenas (mallopt) and those of the processes it starts (glibc reads
    MALLOC_ARENA_MAX when a process starts: uvicorn's `--workers`). A MALLOC_ARENA_MAX already
    in the environment wins: glibc applied it when this process started.

    True when this call set the cap here; False when the environment had one or the C
    library is not glibc (no mallopt), where the variable is inert.
    """
    if _ENV in os.environ:
        return False
    os.environ[_ENV] = str(arenas)
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    return mallopt is not None and mallopt(_M_ARENA_MAX, arenas) == 1
