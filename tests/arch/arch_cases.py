"""The architectures of docs/SUPPORTED_MODELS.md as tiny random configs (2 layers, hidden 32, vocab 97).

Each case is a real transformers config class at tiny sizes, with the family's own features switched on:
sliding windows of 4 tokens (shorter than the test prompts), fused projections, NoPE layers, multipliers.
"""

from __future__ import annotations

from dataclasses import dataclass

COMMON = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=256, eos_token_id=1, bos_token_id=0, pad_token_id=0)
WINDOW = 4  # sliding window of the sliding cases: the prompts (20+ tokens) and validation (12) run past it
UNFUSED = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
FUSED = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]  # Phi-3: one linear for q|k|v, one for gate|up


@dataclass(frozen=True)
class ArchCase:
    name: str  # row of the table
    config_class: str  # transformers class name
    extra: tuple = ()  # (key, value) pairs on top of COMMON
    targets: tuple = tuple(UNFUSED)  # PEFT target_modules of the experts
    chat_template: bool = True  # False: the export has none (`--chat` must say so)
    sliding: bool = False  # some layers attend within WINDOW tokens only

    def config(self):
        import transformers

        return getattr(transformers, self.config_class)(**{**COMMON, **dict(self.extra)})


CASES = [
    ArchCase("llama", "LlamaConfig"),
    ArchCase("mistral", "MistralConfig", (("sliding_window", WINDOW),), sliding=True),
    ArchCase("qwen2", "Qwen2Config", (("use_sliding_window", True), ("sliding_window", WINDOW),
                                      ("max_window_layers", 1)), sliding=True),
    ArchCase("qwen3", "Qwen3Config", (("head_dim", 8),)),
    ArchCase("gemma3", "Gemma3TextConfig", (("head_dim", 8), ("sliding_window", WINDOW),
                                            ("layer_types", ["sliding_attention", "full_attention"])),
             chat_template=False, sliding=True),
    ArchCase("phi3", "Phi3Config", targets=tuple(FUSED)),
    ArchCase("gemma2", "Gemma2Config", (("head_dim", 8), ("sliding_window", WINDOW)), sliding=True),
    ArchCase("olmo2", "Olmo2Config"),
    ArchCase("granite", "GraniteConfig", (("embedding_multiplier", 2.0), ("residual_multiplier", 0.5),
                                          ("attention_multiplier", 0.3), ("logits_scaling", 2.0))),
    ArchCase("cohere", "CohereConfig", (("logit_scale", 0.5),)),
    ArchCase("stablelm", "StableLmConfig", (("partial_rotary_factor", 0.5),)),
    ArchCase("smollm3", "SmolLM3Config", (("no_rope_layer_interval", 2),)),
]
BY_NAME = {c.name: c for c in CASES}
