"""What a generation returns for one prompt."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Result:
    text: str | None  # generated text (None when the export has no tokenizer), cut before a stop string
    token_ids: list[int]  # generated ids only (the prompt's are in prompt_token_ids)
    prompt_token_ids: list[int]
    preference: list[float]  # the normalised preference active at the end
    router_mix: list[float]  # [K] weights of the router experts for that preference
    finish_reason: str | None  # "stop" (EOS, stop id or stop string) or "length"
    timings: dict = field(default_factory=dict)  # prefill_ms, decode_ms_per_token, total_ms, token counts

    def to_dict(self, prompt: bool = False) -> dict:
        d = asdict(self)
        if not prompt:
            d.pop("prompt_token_ids")
        return d
