"""Code run in a fresh interpreter: what importing a module pulls in shows only there."""

from __future__ import annotations

import subprocess
import sys


def fresh_python(code: str, timeout: float = 60) -> str:
    """The standard output of `python -c code` in a new interpreter; raises if it fails."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=timeout
    )
    return done.stdout
