"""The recipe's work folder: which stages are done (resume), and a JSONL log of training metrics.

    WORK/recipe.json        the RecipeConfig of the run (a resumed run must use the same one)
    WORK/state.json         {"done": [stage, ...]}                        (replaced atomically)
    WORK/log.jsonl          one JSON object per logged step (stage, step, rewards, loss, ...)
    WORK/timings.json       seconds per stage, summed over resumed runs    (replaced atomically)

A JSONL file cut by a killed process (a partial last line) is repaired on the next read. What another machine
needs to resume each stage is `resume_files` (docs/TRAINING.md).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from hoe.core.atomic import atomic_write_text
from hoe.core.errors import ConfigError

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
        rows = read_jsonl(self.work / "log.jsonl")
        return [r for r in rows if r.get("stage", "").startswith(stage_prefix)]

    def drop_records(self, stage: str, from_step: int) -> None:
        """Forget log lines of `stage` at or after `from_step` (a resumed stage rewrites them)."""
        rows = self.records()
        keep = [r for r in rows if not (r.get("stage") == stage and r.get("step", -1) >= from_step)]
        atomic_write_text(self.work / "log.jsonl", "".join(json.dumps(r) + "\n" for r in keep))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL file we append to; a partial last line (a process killed mid-write) is dropped from the
    file, with a warning. A bad line elsewhere is an error."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i < len(lines) - 1:
                raise ConfigError(f"{path}:{i + 1} is not JSON ({e}); expected one JSON object per line") from e
            log.warning("%s: dropping a partial last line (an interrupted write)", path)
            atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows


def resume_files(run: RunState) -> list[str]:
    """Names in WORK (files or folders) to carry to another machine so that `hoe train` resumes there.

    Before `assemble`, the adapters of finished experts are needed too; after it, only the assembled
    checkpoint. The ORT rollout export is a cache and is rebuilt when missing; a partly done stage's own
    state (sampling: samples.jsonl; routers: routers/) is included as soon as it exists.
    """
    done = run.done()
    names = ["recipe.json", "state.json", "log.jsonl", "timings.json"]
    assembled = "assemble" in done
    if not assembled:
        names += ["samples.jsonl"] + (["scored.json", "rewards.json"] if "score" in done else [])
        names += [f"adapters/{s.split(':', 1)[1].replace(':', '_')}" for s in done if s.startswith("expert:")]
    else:
        names += ["experts_ckpt", "rewards.json", "routers"]
    return [n for n in dict.fromkeys(names) if (run.work / n).exists()]
