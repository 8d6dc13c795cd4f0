"""`limit_malloc_arenas`: the gateway's threads share two glibc malloc arenas."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not hasattr(ctypes.CDLL(None), "malloc_info"), reason="glibc only (malloc_info)"
)

# Eight threads allocate at once (a barrier keeps them all alive: glibc hands the arena of
# a thread that ended to the next one), then malloc_info's XML names one <heap> per arena.
ARENAS_USED = """
import ctypes, os, sys, tempfile, threading
from gateway.arenas import limit_malloc_arenas
limited = limit_malloc_arenas() if sys.argv[1] == "limit" else None
barrier = threading.Barrier(8)
def allocate():
    held = [bytes(100_000) for _ in range(4)]
    barrier.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads: t.start()
for t in threads: t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
with tempfile.TemporaryDirectory() as folder:
    path = os.path.join(folder, "malloc_info.xml")
    stream = libc.fopen(path.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    heaps = open(path).read().count("<heap nr=")
print(limited, os.environ.get("MALLOC_ARENA_MAX"), heaps)
"""


def arenas_used(mode: str, env: dict[str, str]) -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", ARENAS_USED, mode],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return out.stdout.split()


def test_threads_share_two_arenas_once_limited_and_started_processes_inherit_it() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    limited, exported, heaps = arenas_used("limit", env)
    assert (limited, exported) == ("True", "2")
    assert int(heaps) <= 2
    _, _, unlimited_heaps = arenas_used("none", env)
    assert int(unlimited_heaps) > 2  # the count sees what the cap prevents


def test_an_arena_max_in_the_environment_wins() -> None:
    limited, exported, heaps = arenas_used("limit", {**os.environ, "MALLOC_ARENA_MAX": "1"})
    assert (limited, exported, heaps) == ("False", "1", "1")
