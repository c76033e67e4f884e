"""Optional JSONL traces of fan-outs: what every model saw, said and cost.

Off unless `save_traces` is set. One file per session; a trace failure is logged and never
breaks a turn. Traces hold prompts and outputs, never keys or headers.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from moa_core.clock import Clock

log = logging.getLogger(__name__)


class TraceWriter:
    def __init__(self, directory: str | Path, clock: Clock):
        self._directory = Path(directory)
        self._clock = clock

    def path_for(self, session: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", session).strip("._") or "session"
        return self._directory / f"{safe}.jsonl"

    def write(self, session: str, record: dict) -> None:
        try:
            self._directory.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"ts": self._clock.now().isoformat(), **record}, ensure_ascii=False)
            with self.path_for(session).open("a", encoding="utf-8") as handle:
                handle.write(line + "\n")
        except Exception:
            log.warning("could not write a MoA trace for session %s", session, exc_info=True)
