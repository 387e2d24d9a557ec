"""Configuration of the HoE training recipe (torch-free), one dataclass per stage, saved as `recipe.json`.

The defaults are the recipe for `models/smollm2-hoe/` (see its MODEL_CARD.md and docs/TRAINING.md): sized to
run in about 3 hours on 2 quiet CPU cores.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hoe.core.atomic import atomic_write_text
from hoe.core.config import JsonConfig
from hoe.core.errors import ConfigError
from hoe.core.objectives import DEFAULT_OBJECTIVES


@dataclass
class SampleConfig(JsonConfig):
    """Best-of-n sampling from the base model (shared by all experts)."""

    n_samples: int = 4  # answers sampled per training prompt
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 40  # answers are cut here (and then carry no EOS)
    batch_prompts: int = 16  # prompts prefilled per batch (rows = batch_prompts · n_samples)
    sentence_prefixes: bool = True  # also offer each sample cut at its sentence ends (EOS appended)


@dataclass
class ExpertConfig(JsonConfig):
    """Rejection-sampling fine-tuning of one PEFT LoRA adapter per objective on its best candidates."""

    rank: int = 8  # LoRA rank r (<= 16)
    alpha: float = 16.0  # LoRA alpha (scaling = alpha / r)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])
    lr: float = 2e-3  # AdamW
    epochs: int = 1
    batch_size: int = 8


@dataclass
class RouterConfig(JsonConfig):
    """Router training at interior anchors: Tchebycheff + online mirror descent + REINFORCE (leave-one-out)."""

    anchors: list[list[float]] = field(default_factory=list)  # trained anchors; [] -> covering_anchors(m, anchor_steps)
    anchor_steps: int = 2  # [] anchors: non-vertex points of the simplex grid of step 1/anchor_steps, + centre
    steps: int = 100  # policy-gradient steps (each trains every anchor; ~50 CPU-s each for SmolLM2, docs/TRAINING.md)
    prompts_per_step: int = 4  # prompts per step, shared by the anchors
    group_size: int = 4  # samples per (prompt, anchor) (the leave-one-out baseline averages the other k-1)
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 40
    lr_weight: float = 1e-3  # Adam lr of router weights [E, in]
    lr_bias: float = 3e-2  # Adam lr of router biases [E]
    omd_eta: float = 4.0  # mirror-descent step of the objective weights w
    normalise: bool = True  # divide each objective's advantages by its batch std (tchebycheff.py)
    grad_clip: float = 1.0
    grad_rows: int = 16  # rows per teacher-forced forward/backward (gradients accumulate; bounds memory)
    rollout: str = "ort"  # "ort": our onnxruntime runtime on an export of the model (rollout.py); "torch"


@dataclass
class RecipeConfig:
    """The whole recipe: base model, objectives, data and the three stages."""

    base: str = ""  # Hugging Face folder of the base; "" -> SmolLM2-135M-Instruct (prepare_base)
    objectives: list[str] = field(default_factory=lambda: list(DEFAULT_OBJECTIVES))
    train_prompts: str = ""  # JSONL; "" -> data/prompts/train.jsonl
    n_prompts: int = 304  # training prompts used (the first n of the file)
    seed: int = 0
    threads: int = 1  # torch threads (1 is the fastest when the 2 cores are shared)
    sample: SampleConfig = field(default_factory=SampleConfig)
    expert: ExpertConfig = field(default_factory=ExpertConfig)
    router: RouterConfig = field(default_factory=RouterConfig)

    _NESTED = {"sample": SampleConfig, "expert": ExpertConfig, "router": RouterConfig}

    def __post_init__(self) -> None:
        if not self.objectives:
            raise ConfigError("objectives must name at least one objective, got []")
        if self.router.rollout not in ("ort", "torch"):
            raise ConfigError(f"router.rollout must be 'ort' or 'torch', got {self.router.rollout!r}")
        if self.sample.n_samples < 1 or self.router.group_size < 2:
            raise ConfigError(f"n_samples must be >= 1 and group_size >= 2, got {self.sample.n_samples}, "
                              f"{self.router.group_size}")
        if not 1 <= self.expert.rank <= 16:
            raise ConfigError(f"expert rank must be in [1, 16], got {self.expert.rank}")
        m = len(self.objectives)
        for a in self.router.anchors:
            if len(a) != m or min(a) < 0 or abs(sum(a) - 1) > 1e-6:
                raise ConfigError(f"router anchor must be a simplex point of length {m}, got {a}")

    @property
    def trained_anchors(self) -> list[list[float]]:
        """The interior anchors whose routers are trained (the vertices keep constant routers)."""
        from hoe.core.routing import covering_anchors

        return self.router.anchors or covering_anchors(len(self.objectives), self.router.anchor_steps)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (getattr(self, f.name).to_dict() if f.name in self._NESTED else getattr(self, f.name))
                for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RecipeConfig:
        data = _migrate(data)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"RecipeConfig: unknown fields {unknown}; expected a subset of {sorted(names)}")
        data = dict(data)
        for key, sub in cls._NESTED.items():
            if key in data:
                data[key] = sub.from_dict(data[key])
        return cls(**data)

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> RecipeConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"RecipeConfig: file not found: {path}")
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """A recipe saved before the joint router stage (router.save_every present; e.g. the training.json of the
    committed model) means: no reward normalisation, PyTorch rollouts, and `anchors: []` = the uniform anchor."""
    router = data.get("router")
    if not isinstance(router, dict) or "save_every" not in router:
        return data
    router = {k: v for k, v in router.items() if k != "save_every"}
    router.setdefault("normalise", False)
    router.setdefault("rollout", "torch")
    if not router.get("anchors"):
        m = len(data.get("objectives") or DEFAULT_OBJECTIVES)
        router["anchors"] = [[1.0 / m] * m]
    return {**data, "router": router}
