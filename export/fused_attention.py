"""Fused attention for the onnxruntime targets: each decoder layer's attention core becomes one
com.microsoft GroupQueryAttention (GQA) with rotary by com.microsoft RotaryEmbedding, so the KV cache
can live in one preallocated buffer that past and present share (no Concat of the whole cache).

The attention module of every layer is swapped, before tracing, for `FusedAttention`: the q/k/v/o
projections stay the model's own linears (so HoE sites and plain MatMul weights are untouched), the
rest is one custom op, `hoe::gqa`, whose ONNX translation is

    q [B,T,H·D] ─► RotaryEmbedding(position_ids, cos, sin) ─┐
    k [B,T,Hkv·D] ─► RotaryEmbedding(position_ids, cos, sin) ─┼─► GroupQueryAttention ─► out [B,T,H·D]
    v [B,T,Hkv·D] ───────────────────────────────────────────┘     past [B,Hkv,C,D] ─► present [B,Hkv,C',D]
    mask4d [B,1,T,S] (the model's own additive mask) = attention_bias; seqlens_k[b] = S-1; total = S;
    query_seqlens[b] = T

Why this form (checked on onnxruntime 1.32 CPU, see docs/GRAPH.md):
  * left padding stays: the padding is masked by `attention_bias` (the mask the model itself builds, so
    sliding windows and padding mean exactly what they mean in PyTorch); every row then has S columns,
    so `seqlens_k` = S-1 for all rows and `total_sequence_length` = S (S = past + new columns);
  * rotary runs outside GQA: GQA's own rotary (`do_rotary`) takes the positions of a first prompt from
    the first element of `position_ids` only, which is wrong for left-padded rows;
  * `query_seqlens` = T for every row lifts GQA's "batch 1 only" rule for a multi-token step with a past
    (nothing is right-padded: padding is the bias's business);
  * with past of length P (growing mode) GQA returns present of length P+T, as the standard graph does;
    bound to one buffer of C >= P+T columns for past and present, it writes the new columns in place.
With `--attention-kernel` the translation is one node, hoe's Attention (or AttentionInt8) op, that takes
position_ids, cos and sin too and rotates q and k itself (runtime/csrc/attention.h: per token, so left
padding is fine): no RotaryEmbedding nodes.
The eager implementation of `hoe::gqa` is the same computation in PyTorch (what the trace records is
only its signature; it is also what the fused modules compute when run in PyTorch).
"""

from __future__ import annotations

import torch
from hoe.runtime.kernels import ATTENTION_INT8_OP, ATTENTION_OP, MIXTURE_DOMAIN
from torch import nn

GQA_DOMAIN = "com.microsoft"


@torch.library.custom_op("hoe::gqa", mutates_args=())
def gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_k: torch.Tensor, past_v: torch.Tensor,
        position_ids: torch.Tensor, mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
        num_heads: int, kv_heads: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [B,T,H·D], k/v [B,T,Hkv·D], past [B,Hkv,P,D], position_ids [B,T], mask [B,1,T,P+T] additive,
    cos/sin [max_pos, D/2] -> out [B,T,H·D], present_k/v [B,Hkv,P+T,D]. An int8 past [B,Hkv,P,D+4] (rows of D
    values and their scale, hoe.contract.kv_int8) attends dequantized, the new columns exact; its present holds
    the new columns quantized."""
    b, t, _ = q.shape
    d = q.shape[-1] // num_heads
    qh = _rotate(q.view(b, t, num_heads, d), position_ids, cos, sin).transpose(1, 2)  # [B,H,T,D]
    kh = _rotate(k.view(b, t, kv_heads, d), position_ids, cos, sin).transpose(1, 2)  # [B,Hkv,T,D]
    vh = v.view(b, t, kv_heads, d).transpose(1, 2)
    stored = None  # an int8 cache's present: the past's rows, then the new columns quantized
    if past_k.dtype == torch.int8:
        from hoe.contract import kv_int8

        stored = tuple(torch.cat([p, torch.from_numpy(kv_int8.quantize(x.numpy()))], dim=2)
                       for p, x in ((past_k, kh), (past_v, vh)))
        past_k, past_v = (torch.from_numpy(kv_int8.dequantize(p.numpy())).to(q.dtype) for p in (past_k, past_v))
    present_k, present_v = torch.cat([past_k, kh], dim=2), torch.cat([past_v, vh], dim=2)
    groups = num_heads // kv_heads
    keys, values = present_k.repeat_interleave(groups, 1), present_v.repeat_interleave(groups, 1)
    scores = torch.matmul(qh, keys.transpose(2, 3)) * scale + mask  # [B,H,T,P+T]
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    out = torch.matmul(probs, values).transpose(1, 2).reshape(b, t, num_heads * d)
    return (out, *stored) if stored is not None else (out, present_k, present_v)


@gqa.register_fake
def _gqa_fake(q, k, v, past_k, past_v, position_ids, mask, cos, sin, num_heads, kv_heads, scale):
    b, t, _ = q.shape
    present = past_k.new_empty((b, kv_heads, past_k.shape[2] + t, past_k.shape[3]))
    return torch.empty_like(q), present, torch.empty_like(present)


def _rotate(x: torch.Tensor, position_ids: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Non-interleaved RoPE: x [B,T,h,D], positions [B,T] -> x·cos + rotate_half(x)·sin."""
    c, s = cos[position_ids][:, :, None], sin[position_ids][:, :, None]  # [B,T,1,D/2]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * c - x2 * s, x2 * c + x1 * s], dim=-1)


_TYPES = ["tensor(float)", "tensor(float16)", "tensor(bfloat16)", "tensor(int8)", "tensor(int32)", "tensor(int64)"]


def _contrib_op(name: str, n_inputs: int, n_outputs: int, attributes: dict[str, str], domain: str = GQA_DOMAIN):
    """An onnxscript Op for an op outside the ONNX domain (com.microsoft's, hoe's own: onnx registers no schema
    for them); every input optional, each with its own type variable."""
    import onnxscript
    from onnx.defs import OpSchema

    kinds = {"int": OpSchema.AttrType.INT, "float": OpSchema.AttrType.FLOAT}
    param = OpSchema.FormalParameterOption.Optional
    schema = OpSchema(
        name, domain, 1,
        inputs=[OpSchema.FormalParameter(f"i{i}", f"T{i}", param_option=param) for i in range(n_inputs)],
        outputs=[OpSchema.FormalParameter(f"o{i}", f"U{i}", param_option=param) for i in range(n_outputs)],
        type_constraints=[(f"T{i}", _TYPES, "") for i in range(n_inputs)]
        + [(f"U{i}", _TYPES, "") for i in range(n_outputs)],
        attributes=[OpSchema.Attribute(k, kinds[v], k) for k, v in attributes.items()],
    )
    return onnxscript.values.Op(onnxscript.values.Opset(domain, 1), name, schema)


def _gqa_translation(q, k, v, past_k, past_v, position_ids, mask, cos, sin, num_heads: int, kv_heads: int,
                     scale: float):
    """ONNX of hoe::gqa: two RotaryEmbedding, one GroupQueryAttention (module docstring)."""
    from onnxscript import opset20 as op

    rotary = _contrib_op("RotaryEmbedding", 4, 1, {"num_heads": "int"})
    attention = _contrib_op("GroupQueryAttention", 17, 3, {"num_heads": "int", "kv_num_heads": "int",
                                                            "scale": "float"})
    total = op.Shape(mask, start=3, end=4)  # [1] int64: S = P+T
    batch = op.Shape(mask, start=0, end=1)  # [1]; from the mask (one tensor for all layers: CSE shares these)
    seqlens = op.Cast(op.Expand(op.Sub(total, op.Constant(value_ints=[1])), batch), to=6)  # [B] int32
    total32 = op.Cast(op.Squeeze(total), to=6)  # [] int32
    new = op.Cast(op.Expand(op.Shape(mask, start=2, end=3), batch), to=6)  # [B] int32: T
    q_rot = rotary(q, position_ids, cos, sin, num_heads=num_heads)
    k_rot = rotary(k, position_ids, cos, sin, num_heads=kv_heads)
    return attention(q_rot, k_rot, v, past_k, past_v, seqlens, total32, None, None, None, mask,
                     None, None, None, None, None, new, num_heads=num_heads, kv_num_heads=kv_heads, scale=scale)


def _kernel_translation(q, k, v, past_k, past_v, position_ids, mask, cos, sin, num_heads: int, kv_heads: int,
                        scale: float, op_name: str = ATTENTION_OP):
    """ONNX of hoe::gqa as one node of hoe's Attention op (runtime/csrc/attention.h) in place of the rotary nodes
    and GroupQueryAttention: it rotates q and k at position_ids itself and takes the model's mask as it is (no
    sequence lengths)."""
    attention = _contrib_op(op_name, 9, 3, {"num_heads": "int", "kv_num_heads": "int", "scale": "float"},
                            MIXTURE_DOMAIN)
    return attention(q, k, v, past_k, past_v, mask, position_ids, cos, sin, num_heads=num_heads,
                     kv_num_heads=kv_heads, scale=scale)


def _int8_kernel_translation(q, k, v, past_k, past_v, position_ids, mask, cos, sin, num_heads: int, kv_heads: int,
                             scale: float):
    """hoe::gqa on an int8 cache: hoe's AttentionInt8 op (rows of D int8 and their scale)."""
    return _kernel_translation(q, k, v, past_k, past_v, position_ids, mask, cos, sin, num_heads, kv_heads, scale,
                               op_name=ATTENTION_INT8_OP)


def translations(kernel: bool = False, int8_cache: bool = False) -> dict:
    """The custom translation of hoe::gqa: GroupQueryAttention, or hoe's Attention op (`kernel`), on an int8
    cache its AttentionInt8 form."""
    chosen = _gqa_translation if not kernel else _int8_kernel_translation if int8_cache else _kernel_translation
    return {torch.ops.hoe.gqa.default: chosen}


class RotaryCache(nn.Module):
    """cos, sin [max_pos, D/2] as buffers of one module, so the graph holds one initializer of each."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)


class FusedAttention(nn.Module):
    """Replaces one layer's attention module: its own projections (and Qwen3's q/k norms) around hoe::gqa.
    `past` (set by the caller before each forward) is the layer's (key, value) graph input; the forward
    leaves (present key, present value) in `present`. The model's own cache object is only read for its
    length (by the mask), never for its tensors: any Concat or Slice on the graph's past would copy the
    whole (shared) buffer every step."""

    def __init__(self, attn: nn.Module, num_heads: int, kv_heads: int, rotary: RotaryCache) -> None:
        super().__init__()
        self.attn = attn
        self.num_heads, self.kv_heads = num_heads, kv_heads
        object.__setattr__(self, "rotary", rotary)  # not a submodule: registered once, on the model
        self.past: tuple[torch.Tensor, torch.Tensor] | None = None
        self.present: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, hidden_states, attention_mask=None, position_ids=None, **kwargs):
        a = self.attn
        if attention_mask is None or position_ids is None or self.past is None:
            raise RuntimeError("fused attention needs the 4-D additive mask, position_ids and its past")
        shape = (*hidden_states.shape[:-1], -1, a.head_dim)  # [B,T,h,D]
        q, k, v = a.q_proj(hidden_states), a.k_proj(hidden_states), a.v_proj(hidden_states)
        if hasattr(a, "q_norm"):  # Qwen3: RMSNorm over each head before the rotary
            q, k = a.q_norm(q.view(shape)).flatten(-2), a.k_norm(k.view(shape)).flatten(-2)
        out, *present = torch.ops.hoe.gqa(q, k, v, *self.past, position_ids, attention_mask.to(q.dtype),
                                          self.rotary.cos, self.rotary.sin, self.num_heads, self.kv_heads,
                                          float(a.scaling))
        self.present = tuple(present)
        return a.o_proj(out), None


def rotary_caches(model: nn.Module, max_positions: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [max_positions, D/2] from the model's own rotary module (its scaling included)."""
    rotary = model.model.rotary_emb
    pos = torch.arange(max_positions)[None]
    probe = torch.zeros(1, dtype=dtype)
    with torch.no_grad():
        cos, sin = rotary(probe, pos)  # [1, max_pos, D]
    half = cos.shape[-1] // 2
    if not torch.equal(cos[..., :half], cos[..., half:]):
        raise ValueError("rotary embedding is not of the rotate-half form GroupQueryAttention expects")
    return cos[0, :, :half].contiguous(), sin[0, :, :half].contiguous()


def fused_modules(model: nn.Module) -> list[FusedAttention]:
    """The FusedAttention modules of `model`, in layer order ([] when none is installed)."""
    return [layer.self_attn for layer in model.model.layers if isinstance(layer.self_attn, FusedAttention)]


# Attention modules FusedAttention reproduces: separate q/k/v/o linears, rotate-half rotary on every layer, the
# model's mask, scale 1/sqrt(D), no logit soft-capping (tests/runtime/test_runtime_fused.py; Qwen3's q/k norms
# are kept). Other families (Gemma's per-layer rotary and soft-capping, Phi-3's fused qkv, partial rotary, NoPE
# layers, ...) export the standard attention on the onnxruntime targets too (kv_cache.shared_buffer false).
FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def supported(model: nn.Module) -> bool:
    """Whether install() reproduces this model's attention exactly (FUSED_MODEL_TYPES)."""
    return getattr(model.config, "model_type", None) in FUSED_MODEL_TYPES


def install(model: nn.Module) -> int:
    """Swap every decoder layer's self_attn for FusedAttention (in place). Returns the layer count."""
    cfg = model.config
    rope = (getattr(cfg, "rope_parameters", None) or getattr(cfg, "rope_scaling", None) or {})
    if rope.get("rope_type", "default") == "dynamic":
        raise ValueError("dynamic-NTK rotary (positions change the frequencies) cannot use a fixed cos/sin cache")
    rotary = RotaryCache(*rotary_caches(model, int(cfg.max_position_embeddings), next(model.parameters()).dtype))
    model.model.hoe_rotary_cache = rotary
    layers = model.model.layers
    for layer in layers:
        layer.self_attn = FusedAttention(layer.self_attn, cfg.num_attention_heads, cfg.num_key_value_heads, rotary)
    return len(layers)
