"""The HoE training recipe: best-of-n LoRA experts, then Tchebycheff/OMD policy-gradient routers.

Importing this package does not import torch; `recipe.train_experts` / `recipe.train_routers` do.
"""

from .config import ExpertConfig, RecipeConfig, RouterConfig, SampleConfig

__all__ = ["ExpertConfig", "RecipeConfig", "RouterConfig", "SampleConfig"]
