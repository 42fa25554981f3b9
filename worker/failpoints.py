"""Failpoints: named places where a fault test can hold a process, to kill it exactly there.

The ``failpoints`` key names a JSON file. While that file lists a point (``{"journal:outputs_stored":
"pause"}``), a process that reaches the point writes ``<file>.hit`` (``{"point", "pid", "job"}``) and
waits until the file no longer lists it. Points are reached after each journal write
(``journal:<phase>``), so a test can stop a worker right after a step is on disk, ``kill -9`` it, take
the point out, and watch the next start recover the job. With no file configured (the default) a point
costs nothing; a file that is missing or unreadable holds nothing.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

log = logging.getLogger(__name__)

POLL = 0.05


class Failpoints:
    def __init__(self, path: str = "") -> None:
        self.path = Path(path) if path else None

    def _listed(self, point: str) -> bool:
        try:
            spec = json.loads(self.path.read_text(encoding="utf-8"))  # type: ignore[union-attr]
        except (OSError, ValueError):
            return False
        return isinstance(spec, dict) and point in spec

    def reach(self, point: str, job: str = "") -> None:
        """Hold here while the failpoint file lists ``point``."""
        if self.path is None or not self._listed(point):
            return
        log.warning("Failpoint %s reached (job %s): holding", point, job or "-")
        hit = self.path.with_name(self.path.name + ".hit")
        hit.write_text(json.dumps({"point": point, "pid": os.getpid(), "job": job}))
        while self._listed(point):
            time.sleep(POLL)
        log.warning("Failpoint %s released", point)
