"""Shared by the benchmarks that start `python app.py` in its own process."""
from __future__ import annotations

import subprocess
import time
import urllib.request


def wait_until_up(url: str, app: subprocess.Popen, timeout_s: float = 120.0, poll_s: float = 0.05) -> None:
    """Return once the app answers `url` with 200; SystemExit if it exits first or takes longer than timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if urllib.request.urlopen(url, timeout=1).status == 200:
                return
        except OSError:
            pass
        if app.poll() is not None:
            raise SystemExit("the app exited before answering")
        time.sleep(poll_s)
    raise SystemExit(f"the app did not answer within {timeout_s:.0f} s")
