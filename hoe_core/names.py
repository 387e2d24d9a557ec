"""Canonical tensor names, shared by checkpoints, ONNX graph inputs and the runtime (torch-free).

    experts.{module}.lora_A   [E, r, in]    PEFT's A (in → r), zero-padded to the common rank
    experts.{module}.lora_B   [E, out, r]   PEFT's B (r → out)
    experts.{module}.scaling  [E]           alpha / r of each expert (PEFT's meaning)
    routers.{module}.weight   [K, E, in]    router expert k's linear routing layer for this module
    routers.{module}.bias     [K, E]
    routers.mask              [K, E]        1 where router k may route to expert j, else 0
"""

EXPERTS_PREFIX = "experts."
ROUTERS_PREFIX = "routers."
ROUTER_MASK = "routers.mask"


def lora_a(module: str) -> str:
    return f"experts.{module}.lora_A"


def lora_b(module: str) -> str:
    return f"experts.{module}.lora_B"


def scaling(module: str) -> str:
    return f"experts.{module}.scaling"


def router_weight(module: str) -> str:
    return f"routers.{module}.weight"


def router_bias(module: str) -> str:
    return f"routers.{module}.bias"


def expert_names(modules: list[str]) -> list[str]:
    """Every expert tensor name, in canonical order."""
    return [n for m in modules for n in (lora_a(m), lora_b(m), scaling(m))]


def router_names(modules: list[str]) -> list[str]:
    """Every router tensor name, in canonical order."""
    return [ROUTER_MASK] + [n for m in modules for n in (router_weight(m), router_bias(m))]
