"""The recipe's work folder: which stages are done (resume), and a JSONL log of training metrics.

    WORK/recipe.json        the RecipeConfig of the run (a resumed run must use the same one)
    WORK/state.json         {"done": [stage, ...]}
    WORK/log.jsonl          one JSON object per logged step (stage, step, rewards, loss, ...)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..config import atomic_write_text
from ..errors import ConfigError
from .config import RecipeConfig

log = logging.getLogger(__name__)


class RunState:
    def __init__(self, work: str | Path, config: RecipeConfig) -> None:
        self.work = Path(work)
        self.work.mkdir(parents=True, exist_ok=True)
        cfg_path = self.work / "recipe.json"
        if cfg_path.is_file():
            old = RecipeConfig.load(cfg_path)
            if old.to_dict() != config.to_dict():
                raise ConfigError(f"{self.work} holds a run with another recipe ({cfg_path}); "
                                  "use another --work folder or delete it")
        else:
            config.save(cfg_path)
        self.config = config

    @property
    def _state_path(self) -> Path:
        return self.work / "state.json"

    def done(self) -> list[str]:
        if not self._state_path.is_file():
            return []
        return list(json.loads(self._state_path.read_text())["done"])

    def is_done(self, stage: str) -> bool:
        return stage in self.done()

    def mark_done(self, stage: str) -> None:
        done = self.done()
        if stage not in done:
            atomic_write_text(self._state_path, json.dumps({"done": done + [stage]}, indent=2) + "\n")
        log.info("stage %s done", stage)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.work / "log.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def records(self, stage_prefix: str = "") -> list[dict[str, Any]]:
        path = self.work / "log.jsonl"
        if not path.is_file():
            return []
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [r for r in rows if r.get("stage", "").startswith(stage_prefix)]

    def drop_records(self, stage: str, from_step: int) -> None:
        """Forget log lines of `stage` at or after `from_step` (a resumed stage rewrites them)."""
        rows = self.records()
        keep = [r for r in rows if not (r.get("stage") == stage and r.get("step", -1) >= from_step)]
        atomic_write_text(self.work / "log.jsonl", "".join(json.dumps(r) + "\n" for r in keep))
