"""hoe's own onnxruntime kernels (runtime/csrc): the Mixture op of `hoe export --bake-experts --mixture-kernel`,
the Attention op of `hoe export --attention-kernel` and the MatMulInt4 op of `hoe export --linear-kernel` (with
the Mixture kernel too, MatMulInt4Mixture: a baked product and its Mixture as one node).

The C++ sources are built at install into one shared library, `hoe.runtime._kernels` (setup.py; a C++17
compiler is needed, and without one the install goes on without it). onnxruntime loads it per session with
`SessionOptions.register_custom_ops_library`, only for graphs whose manifest names the kernel.

    library() -> Path | None             the built library, if this install has it
    register(options, manifest) -> bool  register it with a session's options when the graph needs it
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hoe.core.errors import CheckpointError

MIXTURE_DOMAIN, MIXTURE_OP = "hoe.ort", "Mixture"
MIXTURE_KERNEL = f"{MIXTURE_DOMAIN}.{MIXTURE_OP}"  # quantization.experts.kernel in hoe_config.json
ATTENTION_OP = "Attention"
ATTENTION_INT8_OP = "AttentionInt8"  # the same on an int8 KV cache (`hoe export --kv-cache int8`)
ATTENTION_KERNEL = f"{MIXTURE_DOMAIN}.{ATTENTION_OP}"  # kv_cache.kernel in hoe_config.json
LINEAR_OP = "MatMulInt4"  # the int4 linear (runtime/csrc/linear.h) on export/linear_kernel.py's layout
LINEAR_KERNEL = f"{MIXTURE_DOMAIN}.{LINEAR_OP}"  # quantization.linear_kernel.kernel in hoe_config.json
FUSED_OP = "MatMulInt4Mixture"  # a MatMulInt4 and the Mixture reading its output, as one node (same library)
GATHER_OP = "GatherInt4"  # a tied table's lookup on the lm_head's MatMulInt4 layout (same library)
GATHER_KERNEL = f"{MIXTURE_DOMAIN}.{GATHER_OP}"  # quantization.embedding.op in hoe_config.json
LIBRARY_MODULE = "hoe.runtime._kernels"


def library() -> Path | None:
    """The kernels' shared library of this install, or None when it was installed without a compiler."""
    spec = importlib.util.find_spec(LIBRARY_MODULE)
    return Path(spec.origin) if spec is not None and spec.origin else None


def kernels_used(manifest: dict) -> list[str]:
    """hoe's own ops a manifest's graph holds (MIXTURE_KERNEL, ATTENTION_KERNEL, LINEAR_KERNEL)."""
    quant = manifest.get("quantization") or {}
    named = ((quant.get("experts") or {}).get("kernel"), (manifest.get("kv_cache") or {}).get("kernel"),
             (quant.get("linear_kernel") or {}).get("kernel"))
    return [kernel for kernel in (MIXTURE_KERNEL, ATTENTION_KERNEL, LINEAR_KERNEL) if kernel in named]


def needs_kernels(manifest: dict) -> bool:
    """Whether a manifest's graph holds hoe's own ops."""
    return bool(kernels_used(manifest))


def register(options, manifest: dict) -> bool:
    """Register the library with `options` (onnxruntime.SessionOptions) if the graph needs it; True if it did."""
    used = kernels_used(manifest)
    if not used:
        return False
    path = library()
    if path is None:
        flags = {MIXTURE_KERNEL: "--mixture-kernel", ATTENTION_KERNEL: "--attention-kernel",
                 LINEAR_KERNEL: "--linear-kernel"}
        raise CheckpointError(f"this export's graph uses hoe's {' and '.join(used)} kernel, but this install of hoe "
                              f"was built without it (module {LIBRARY_MODULE} missing): reinstall hoe where a C++17 "
                              f"compiler is available, or re-export without {' '.join(flags[k] for k in used)}")
    options.register_custom_ops_library(str(path))
    return True
