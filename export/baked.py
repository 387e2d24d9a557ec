"""Experts and routers baked into an onnxruntime graph (`hoe export --weights int4 --bake-experts`).

On a CPU the HoE mixture read as graph inputs costs more than it should: every expert and router product is
an fp32 MatMul on a weight onnxruntime cannot prepack (GRAPH.md). Baked, each site group of m modules
reading x [B,T,in] costs one product with x instead of three:

    int8/int4: MatMulNBits(x, [W_base | lora_A | router_W], bias [0 | 0 | router_bias]) ─► Split ─► y, h, logits
               (--block-offsets: [W_base | S | lora_A | router_W] ─► y₀, x·S, h, logits; quantize._offset_product)
               per module: MatMulNBits(h_i, lora_B_i)  (int8)
    fp32:      Add(MatMul(x, [W_base | lora_A | router_W]), [0 | 0 | router_bias]) ─► Split ─► y, h, logits
               per module: MatMul(h_i, lora_B_i)  (fp32: the graph is the unbaked one's, exactly)

Quantized, lora_A and the router weights are quantized like the base (same bits, block size and symmetry: one
column of the concatenated weight is quantized exactly as it would be alone), lora_B at `EXPERT_BITS` (its K is
E·r, tiny); the router bias (with the -inf mask) stays float as the node's bias. With the Mixture kernel lora_B
is on the int8 grid at fp32 too (the kernel reads uint8 levels). The gating (softmax, router_mix, gate
repeat) is unchanged and still reads router_mix per row, so per-row preferences and mid-generation switches
work as before; only swapping experts needs new initializers (`rebake`, same E, r and K; with the linear kernel
the fused product's tiles are rewritten).

`round_trip_experts` gives a PyTorch HoEModel the dequantized experts and routers the graph computes with
(quantize.dequantize_reference calls it), so parity still proves the graph.
"""

from __future__ import annotations

import numpy as np
from hoe.contract.io_spec import ROUTER_MIX
from hoe.contract.manifest import BAKED
from hoe.core import names, packing
from hoe.core.errors import ConfigError
from hoe.core.packing import SiteGroup
from hoe.runtime.kernels import MIXTURE_DOMAIN, MIXTURE_KERNEL, MIXTURE_OP

from .linear_kernel import TILES_SUFFIX, pack, tiled_weight
from .quantize import MS_DOMAIN, OFFSETS_SUFFIX, BlockQuant, QuantConfig, offset_split, quantize_blocks

EXPERT_BITS = 8  # lora_B: K = E·r rows (24 for 3 rank-8 experts), one block per column
FLOAT_BITS = 32  # `quantization.experts` of an fp32 bake: lora_A, router_weight (and lora_B without the kernel)
QUANT_PARTS = ("B", "scales", "zp")  # a MatMulNBits weight's initializers: `{prefix}.{part}`
MIXTURE_TILE = 64  # lora_B columns per tile in the Mixture kernel's layout (kTile in runtime/csrc/mixture.h)
MIXTURE_PARTS = ("levels", "scales", "zeros")  # the Mixture kernel's lora_B: `baked.{group}.lora_B.{part}`


def check_bakeable(cfg: QuantConfig, experts: bool = True) -> None:
    """ConfigError unless experts can be baked into a graph of this precision and target."""
    if cfg.form not in ("MatMulNBits", "none") or not experts:
        raise ConfigError(f"--bake-experts needs experts and fp32, int8 or int4 weights on an onnxruntime target, "
                          f"got weights {cfg.weights!r}, target {cfg.target!r}, experts {experts}")


def experts_section(cfg: QuantConfig, groups: int, kernel: bool = False) -> dict:
    """The manifest's `quantization.experts` of a baked graph (bits per tensor, FLOAT_BITS: float)."""
    bits = cfg.bits if cfg.quantized else FLOAT_BITS
    return {"storage": BAKED, "lora_A": bits, "router_weight": bits,
            "lora_B": EXPERT_BITS if cfg.quantized or kernel else FLOAT_BITS,
            "router_bias": "float", "block_size": cfg.block_size, "symmetric": cfg.symmetric, "groups": groups,
            **({"kernel": MIXTURE_KERNEL} if kernel else {})}


def section_config(section: dict) -> QuantConfig:
    """The QuantConfig lora_A and the routers were baked with (`experts_section`)."""
    return QuantConfig(weights={4: "int4", 8: "int8", FLOAT_BITS: "fp32"}[section["lora_A"]],
                       block_size=section["block_size"], symmetric=section["symmetric"])


def bake_experts(model, groups: list[SiteGroup], packed: dict[str, np.ndarray], cfg: QuantConfig,
                 kernel: bool = False) -> dict:
    """Rewrite `model` (onnx_ir.Model, quantized to MatMulNBits, experts and routers still graph inputs) in place
    so that it holds `packed` (packing.pack's tensors in the graph dtype) as initializers. `kernel`: each group's
    gating and lora_B products become one hoe.ort Mixture node (runtime/csrc). Returns the section."""
    check_bakeable(cfg)
    baker = _Baker(model, packed, cfg, kernel)
    for g in groups:
        baker.group(g)
    baker.finish()
    return experts_section(cfg, len(groups), kernel)


def rebake(model, groups: list[SiteGroup], packed: dict[str, np.ndarray], section: dict) -> None:
    """New experts and routers (same E, r and K) into a baked graph, in place: the initializers are replaced."""
    cfg = section_config(section)
    init = model.graph.initializers
    for g in groups:
        n_base, n_a, n_r = _held_widths(model.graph, g)
        new = [packed[packing.lora_a(g)].shape[1], packed[packing.router_weight(g)].shape[1]]
        if new != [n_a, n_r]:
            raise ConfigError(f"{g.name}: the baked graph holds {[n_a, n_r]} lora_A/router columns, the new experts "
                              f"have {new} (E, r and K must stay the same; re-export for other sizes)")
        tiles = init.get(_tiles_name(g))
        if tiles is not None:  # hoe's MatMulInt4 computes the product (linear_kernel.py)
            held = tiled_weight(tiles)
            base = [None if a is None else a[:n_base] for a in _parts(held)]
            fused = BlockQuant(*_fused_rows(base, _quantize_ar(g, packed, cfg)), cfg.bits, cfg.block_size, held.k)
            _set(init, tiles.name, pack(fused))
        elif cfg.quantized:
            held = [init.get(f"{_prefix(g)}.{part}") for part in QUANT_PARTS]
            base = [None if v is None else v.const_value.numpy()[:n_base] for v in held]  # the base's rows stay
            _set_all(init, _prefix(g), _fused_rows(base, _quantize_ar(g, packed, cfg)))
        else:
            base = init[f"{_prefix(g)}.weight"].const_value.numpy()[:, :n_base]  # the base's columns stay
            _set(init, f"{_prefix(g)}.weight", _fused_columns(base, g, packed))
        _set(init, f"{_prefix(g)}.bias", _bias(n_base, g, packed))
        if section.get("kernel") == MIXTURE_KERNEL:
            for part, array in zip(MIXTURE_PARTS, _mixture_b(g, packed, cfg)):
                _set(init, f"{_prefix(g)}.lora_B.{part}", array)
            continue
        for module in g.modules:
            name = packing.lora_b(module)
            if cfg.quantized:
                _set_all(init, name, _parts(_quantize_b(packed[name], cfg)))
            else:
                _set(init, f"{name}.weight", packed[name])


def round_trip_experts(tensors: dict[str, np.ndarray], modules: list[str], section: dict,
                       dtype=np.float32) -> dict[str, np.ndarray]:
    """Canonical checkpoint tensors (names.py) -> the dequantized ones a baked graph computes with: lora_A and
    router weights through the base's quantizer, lora_B (scaling folded in, scaling then 1) through lora_B's.
    Column by column this is what `bake_experts` quantizes (each column of a packed tensor is one row of a
    module's tensor here); float ones (an fp32 bake) stay. Other tensors are returned as they are."""
    cfg = section_config(section)
    out = dict(tensors)
    for module in modules:
        for name in (names.lora_a(module), names.router_weight(module)) if cfg.quantized else ():
            t = tensors[name]  # [E, r, in] / [K, E, in]: columns t[a, b, :]
            out[name] = _round_trip(t.reshape(-1, t.shape[-1]).T, cfg.bits, cfg, dtype).T.reshape(t.shape)
        if section["lora_B"] == FLOAT_BITS:
            continue
        b, s = tensors[names.lora_b(module)], tensors[names.scaling(module)]  # [E, out, r], [E]
        e, d_out, r = b.shape
        folded = (b * s[:, None, None]).transpose(0, 2, 1).reshape(e * r, d_out)  # packing.pack's lora_B [E·r, out]
        dq = _round_trip(folded, EXPERT_BITS, cfg, dtype)
        out[names.lora_b(module)] = dq.reshape(e, r, d_out).transpose(0, 2, 1)
        out[names.scaling(module)] = np.ones_like(s)
    return {n: np.ascontiguousarray(v, dtype=tensors[n].dtype) for n, v in out.items()}


# ---------------------------------------------------------------------------- the graph pass


def _offset_terms(y, split):
    """O of y = Add(y₀, MatMul(x·S, O)) when y₀ and x·S are outputs 0 and 1 of the group's Split, else None."""
    add = y.producer()
    if add is None or add.op_type != "Add" or add.inputs[0] is not split.outputs[0]:
        return None
    product = add.inputs[1].producer()
    if product is None or product.op_type != "MatMul" or product.inputs[0] is not split.outputs[1]:
        return None
    offsets = product.inputs[1]
    return offsets if offsets.name.endswith(OFFSETS_SUFFIX) and offsets.const_value is not None else None


def _joined(ys: list):
    """The one value whose first columns are ys: y itself, or the input of the Split that made exactly ys."""
    if len(ys) == 1:
        return ys[0]
    split = ys[0].producer()
    if split is None or split.op_type != "Split" or list(split.outputs) != ys:
        raise ConfigError(f"expected the modules' base outputs to be one Split's outputs in order, found "
                          f"{[v.name for v in ys]}")
    return split.inputs[0]


def _held_widths(graph, g: SiteGroup) -> tuple[int, int, int]:
    """Columns of a baked group's fused product: (base (| x·S), lora_A, router). From its Split's widths, or with
    the Mixture kernel (that Split gone) from the kernel's h_offset and lora_B rows and the product's N."""
    init = graph.initializers
    if f"{_prefix(g)}.widths" in init:
        *head, n_a, n_r = init[f"{_prefix(g)}.widths"].const_value.numpy().tolist()
        return sum(head), n_a, n_r
    fused, tiles = init.get(f"{_prefix(g)}.B"), init.get(_tiles_name(g))  # MatMulNBits' B [N, k_blocks, bytes]
    if tiles is not None:
        n_all = tiled_weight(tiles).n
    else:  # B, or the fp32 weight [in, N]
        n_all = fused.shape[0] if fused is not None else init[f"{_prefix(g)}.weight"].shape[1]
    n_base = next(n for n in graph if n.name == f"baked/{g.name}/{MIXTURE_OP}").attributes["h_offset"].as_int()
    n_a = len(g.modules) * init[f"{_prefix(g)}.lora_B.levels"].shape[1]
    return n_base, n_a, n_all - n_base - n_a


def _prefix(g: SiteGroup) -> str:
    """The initializers of a group's fused product are `baked.{group}.{B, scales, zp, bias, widths}` (fp32:
    `.weight` instead of B, scales and zp)."""
    return f"baked.{g.name}"


def _tiles_name(g: SiteGroup) -> str:
    """The fused product's B in MatMulInt4's layout (`hoe export --linear-kernel`)."""
    return f"{_prefix(g)}.B{TILES_SUFFIX}"


def _parts(q) -> tuple:
    """(B, scales, zero points | None) of a BlockQuant, in QUANT_PARTS order."""
    return q.packed, q.scales, q.zero_points


def _fused_rows(base: list, q) -> tuple:
    """The fused product's (B, scales, zp): the base's rows [N_base, ...] then lora_A's and the routers'."""
    return tuple(None if b is None else np.concatenate([b, new.astype(b.dtype)]) for b, new in zip(base, _parts(q)))


def _ar(g: SiteGroup, packed: dict[str, np.ndarray]) -> np.ndarray:
    """[lora_A | router_W] of a group: [in, m·E·r + m·K·E]."""
    return np.concatenate([packed[packing.lora_a(g)], packed[packing.router_weight(g)]], axis=1)


def _quantize_ar(g: SiteGroup, packed: dict[str, np.ndarray], cfg: QuantConfig):
    return quantize_blocks(_ar(g, packed), cfg.bits, cfg.block_size, cfg.symmetric)


def _fused_columns(base: np.ndarray, g: SiteGroup, packed: dict[str, np.ndarray]) -> np.ndarray:
    """The fp32 fused weight [in, N_base + m·E·r + m·K·E]: the base's columns, then lora_A's and the routers'."""
    return np.concatenate([base, _ar(g, packed).astype(base.dtype)], axis=1)


def _quantize_b(b: np.ndarray, cfg: QuantConfig):
    return quantize_blocks(b, EXPERT_BITS, cfg.block_size, cfg.symmetric)


def _mixture_b(g: SiteGroup, packed: dict[str, np.ndarray], cfg: QuantConfig) -> tuple:
    """The group's lora_B as the Mixture kernel reads it (runtime/csrc/mixture.h), on `_quantize_b`'s grid: levels
    uint8 [tiles, E·r, MIXTURE_TILE], scales and zero points fp32 [k_blocks, tiles·MIXTURE_TILE]. Each module's
    columns are cut in tiles of MIXTURE_TILE, its last one padded (the kernel never writes the padding)."""
    levels, scales, zeros = [], [], []
    for module in g.modules:
        q = _quantize_b(packed[packing.lora_b(module)], cfg)
        cols = ((0, 0), (0, -q.n % MIXTURE_TILE))  # pad the columns to whole tiles
        levels.append(np.pad(q.levels()[:, : q.k].T, cols).reshape(q.k, -1, MIXTURE_TILE).transpose(1, 0, 2))
        scales.append(np.pad(q.scales.astype(np.float32).T, cols))
        zeros.append(np.pad(q.zeros().astype(np.float32).T, cols))
    return (np.ascontiguousarray(np.concatenate(levels)), np.concatenate(scales, axis=1),
            np.concatenate(zeros, axis=1))


def _round_trip(w: np.ndarray, bits: int, cfg: QuantConfig, dtype) -> np.ndarray:
    q = quantize_blocks(np.ascontiguousarray(w, dtype=dtype), bits, cfg.block_size, cfg.symmetric)
    return q.dequantize().astype(np.float32)


def _bias(n_base: int, g: SiteGroup, packed: dict[str, np.ndarray]) -> np.ndarray:
    """[0 (base) | 0 (lora_A) | router bias]: the fused node's bias."""
    bias = packed[packing.router_bias(g)]
    return np.concatenate([np.zeros(n_base + packed[packing.lora_a(g)].shape[1], dtype=bias.dtype), bias])


def _set_all(initializers, prefix: str, arrays: tuple) -> None:
    for part, array in zip(QUANT_PARTS, arrays):
        if array is not None:
            _set(initializers, f"{prefix}.{part}", array)


def _set(initializers, name: str, array: np.ndarray) -> None:
    import onnx_ir as ir

    value = initializers[name]
    if tuple(value.shape) != array.shape:
        raise ConfigError(f"{name}: the baked graph holds {tuple(value.shape)}, the new experts give {array.shape} "
                          "(E, r and K must stay the same; re-export for other sizes)")
    value.const_value = ir.tensor(np.ascontiguousarray(array), name=name)


class _Baker:
    def __init__(self, model, packed: dict[str, np.ndarray], cfg: QuantConfig, kernel: bool = False) -> None:
        self.model, self.graph, self.packed, self.cfg, self.kernel = model, model.graph, packed, cfg, kernel
        self.inputs = {v.name: v for v in self.graph.inputs}
        self.baked: list[str] = []

    def group(self, g: SiteGroup) -> None:
        a_node = self._matmul(packing.lora_a(g))
        r_node = self._matmul(packing.router_weight(g))
        x = a_node.inputs[0]
        base = [u.node for u in x.uses() if self._is_base(u.node)]
        if len(base) != 1 or r_node.inputs[0] is not x:
            raise ConfigError(f"{g.name}: expected one {'MatMulNBits' if self.cfg.quantized else 'MatMul'} base "
                              f"projection beside the experts reading the same input, found {len(base)}")
        base = base[0]
        bias_add = self._bias_add(r_node, packing.router_bias(g))
        head, f, nodes, n_base, head_widths = (self._fuse_quantized if self.cfg.quantized else self._fuse_float)(
            g, x, base)
        held = list(head.outputs) if head else [base.outputs[0]]
        widths = head_widths + [self.packed[packing.lora_a(g)].shape[1], self.packed[packing.router_weight(g)].shape[1]]
        split = self._node("Split", [f, self._init(f"{_prefix(g)}.widths", np.array(widths, np.int64))],
                           "", g.name, num_outputs=len(widths), axis=-1)
        self.graph.insert_before(base, [*nodes, split])
        for old, new in zip(held + [a_node.outputs[0], bias_add.outputs[0]], split.outputs):
            new.shape, new.type = old.shape, old.type
            old.replace_all_uses_with(new)
        for node in (bias_add, r_node, a_node, *([head] if head else []), base):
            self.graph.remove(node, safe=True)
        if self.kernel:
            self._mixture(g, f, split, n_base)
        else:
            for module in g.modules:
                self._lora_b(module)
        self.baked += [packing.lora_a(g), packing.router_weight(g), packing.router_bias(g)]

    def _is_base(self, node) -> bool:
        """The base projection among x's readers: a MatMulNBits, or (fp32) a MatMul on an initializer."""
        if self.cfg.quantized:
            return node.op_type == "MatMulNBits" and node.domain == MS_DOMAIN
        return node.op_type == "MatMul" and node.domain in ("", "ai.onnx") and node.inputs[1].const_value is not None

    def _fuse_quantized(self, g: SiteGroup, x, base):
        """-> (the block offsets' Split or None, the fused product F, its nodes, the base's columns (with x·S), the
        widths of the base's outputs)."""
        attrs = {k: v.as_int() for k, v in base.attributes.items()}
        if attrs["bits"] != self.cfg.bits or attrs["block_size"] != self.cfg.block_size or len(base.inputs) > 4:
            raise ConfigError(f"{g.name}: the base projection is not a plain {self.cfg.bits}-bit MatMulNBits")
        n_base = attrs["N"]  # the base's rows, with block offsets its x·S columns too
        head = offset_split(base)  # with block offsets the base's product is split into y₀ and x·S already
        head_widths = head.inputs[1].const_value.numpy().tolist() if head else [n_base]
        base_parts = [base.inputs[i].const_value.numpy() if i < len(base.inputs) and base.inputs[i] is not None
                      else None for i in (1, 2, 3)]  # B, scales, zp
        quant = self._inits(_prefix(g), _fused_rows(base_parts, _quantize_ar(g, self.packed, self.cfg)))
        bias = self._init(f"{_prefix(g)}.bias", _bias(n_base, g, self.packed))
        n_all = n_base + _ar(g, self.packed).shape[1]
        fused = self._node("MatMulNBits", [x, *quant, None, bias], MS_DOMAIN, g.name, **{**attrs, "N": n_all})
        return head, fused.outputs[0], [fused], n_base, head_widths

    def _fuse_float(self, g: SiteGroup, x, base):
        """`_fuse_quantized` at fp32: Add(MatMul(x, [W | lora_A | router_W]), [0 | 0 | router_bias])."""
        w = base.inputs[1].const_value.numpy()  # [in, N_base]
        weight = self._init(f"{_prefix(g)}.weight", _fused_columns(w, g, self.packed))
        product = self._node("MatMul", [x, weight], "", g.name)
        add = self._node("Add", [product.outputs[0], self._init(f"{_prefix(g)}.bias",
                                                                 _bias(w.shape[1], g, self.packed))], "", g.name)
        return None, add.outputs[0], [product, add], w.shape[1], [w.shape[1]]

    def _mixture(self, g: SiteGroup, f, split, h_offset: int) -> None:
        """The group's gating chain and lora_B products -> one Mixture node reading the fused product F (h and
        the router logits from column h_offset) and Y, whose first columns are the modules' base outputs y_i;
        it writes the modules' z_i (one output each). The bypassed nodes are left for `finish`."""
        adds, ys = [], []
        for module in g.modules:
            product = self._matmul(packing.lora_b(module)).outputs[0]
            uses = [u.node for u in product.uses()]
            if len(uses) != 1 or uses[0].op_type != "Add":
                raise ConfigError(f"{module}: expected its lora_B product to feed one Add, found "
                                  f"{[n.op_type for n in uses]}")
            adds.append(uses[0])
            ys.append(next(v for v in uses[0].inputs if v is not product))
        y, offsets = _joined(ys), None
        if y is split.outputs[0]:  # plain grid: the y_i are F's first columns
            y = f
        elif (offsets := _offset_terms(y, split)) is not None:  # y = y₀ + (x·S)·O: the kernel adds it, from F
            y = f
        levels, scales, zeros = (self._init(f"{_prefix(g)}.lora_B.{part}", a)
                                 for part, a in zip(MIXTURE_PARTS, _mixture_b(g, self.packed, self.cfg)))
        widths = [int(n) for n in g.d_outs]
        sums = {} if offsets is None else {"sums_offset": offsets.const_value.shape[1]}  # x·S follows y₀ [.., N]
        node = self._node(MIXTURE_OP, [y, f, self.inputs[ROUTER_MIX], levels, scales, zeros,
                                       *([offsets] if offsets is not None else [])],
                          MIXTURE_DOMAIN, g.name, h_offset=h_offset, block_size=self.cfg.block_size,
                          modules=len(widths), num_outputs=len(widths),
                          **{f"width_{i}": w for i, w in enumerate(widths)}, **sums)
        self.graph.insert_before(adds[0], node)
        for add, out in zip(adds, node.outputs):
            out.shape, out.type = add.outputs[0].shape, add.outputs[0].type
            add.outputs[0].replace_all_uses_with(out)
        self.baked += [packing.lora_b(module) for module in g.modules]

    def _lora_b(self, module: str) -> None:
        name = packing.lora_b(module)
        node = self._matmul(name)
        if not self.cfg.quantized:  # fp32: the same product on an initializer
            new = self._node("MatMul", [node.inputs[0], self._init(f"{name}.weight", self.packed[name])], "", name)
        else:
            q = _quantize_b(self.packed[name], self.cfg)
            quant = [v for v in self._inits(name, _parts(q)) if v is not None]
            new = self._node("MatMulNBits", [node.inputs[0], *quant], MS_DOMAIN, name, K=q.k, N=q.n, bits=q.bits,
                             block_size=q.block_size,
                             **({"accuracy_level": self.cfg.accuracy_level} if self.cfg.accuracy_level else {}))
        self.graph.insert_before(node, new)
        new.outputs[0].shape, new.outputs[0].type = node.outputs[0].shape, node.outputs[0].type
        node.outputs[0].replace_all_uses_with(new.outputs[0])
        self.graph.remove(node, safe=True)
        self.baked.append(name)

    def finish(self) -> None:
        """Shape reads of the baked inputs become constants; the inputs leave the graph."""
        if self.kernel:
            from onnx_ir.passes.common import RemoveUnusedNodesPass

            RemoveUnusedNodesPass()(self.model)  # the bypassed gating chains and lora_B products
            self.model.opset_imports[MIXTURE_DOMAIN] = 1
        for name in self.baked:
            value = self.inputs[name]
            for use in list(value.uses()):
                node = use.node
                if node.op_type != "Shape":
                    raise ConfigError(f"{name} is still read by {node.op_type} {node.name} after baking")
                shape = self.packed[name].shape
                start = node.attributes["start"].as_int() if "start" in node.attributes else 0
                end = node.attributes["end"].as_int() if "end" in node.attributes else len(shape)
                const = self._init(f"{name}.shape_{start}_{end}", np.array(shape[start:end], np.int64))
                node.outputs[0].replace_all_uses_with(const)
                self.graph.remove(node, safe=True)
            self.graph.inputs.remove(value)
        for name in [n for n, v in self.graph.initializers.items() if not v.uses()]:  # the base's own B/scales
            self.graph.initializers.pop(name)

    # -- building blocks ---------------------------------------------------------------------------
    def _matmul(self, name: str):
        value = self.inputs.get(name)
        nodes = [u.node for u in value.uses() if u.node.op_type == "MatMul"] if value is not None else []
        if len(nodes) != 1:
            raise ConfigError(f"expected one MatMul reading graph input {name}, found {len(nodes)}")
        return nodes[0]

    def _bias_add(self, r_node, bias_name: str):
        adds = [u.node for u in r_node.outputs[0].uses() if u.node.op_type == "Add"]
        if len(adds) != 1 or self.inputs[bias_name] not in adds[0].inputs:
            raise ConfigError(f"expected the router product to be followed by Add({bias_name})")
        return adds[0]

    def _inits(self, prefix: str, arrays: tuple) -> list:
        """`{prefix}.{B, scales, zp}` initializers (None for an absent zero point)."""
        return [None if a is None else self._init(f"{prefix}.{part}", a) for part, a in zip(QUANT_PARTS, arrays)]

    def _init(self, name: str, array: np.ndarray):
        import onnx_ir as ir

        value = ir.Value(name=name, const_value=ir.tensor(np.ascontiguousarray(array), name=name))
        self.graph.register_initializer(value)
        return value

    def _node(self, op_type: str, inputs: list, domain: str, label: str, num_outputs: int = 1, **attrs):
        import onnx_ir as ir

        return ir.Node(domain, op_type, inputs, num_outputs=num_outputs, name=f"baked/{label}/{op_type}",
                       attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()])


def rebake_folder(folder, manifest: dict, packed: dict[str, np.ndarray], groups: list[SiteGroup]) -> None:
    """`rebake` on an exported folder's model file, written anew. A staged folder's files may be links to the live
    export: they are read from a private copy (onnx refuses linked external data) and replaced, never written
    through."""
    import shutil
    from pathlib import Path

    import onnx_ir as ir

    folder = Path(folder)
    names_ = (manifest["model"]["file"], manifest["model"]["external_data"])
    source, fresh = folder / ".rebake-source", folder / ".rebake"
    for d in (source, fresh):
        d.mkdir()
    try:
        for name in names_:
            shutil.copyfile(folder / name, source / name)
        model = ir.load(source / names_[0])
        rebake(model, groups, packed, manifest["quantization"]["experts"])
        ir.save(model, fresh / names_[0], external_data=names_[1])
        del model
        for name in names_:
            (folder / name).unlink()
            (fresh / name).rename(folder / name)
    finally:
        shutil.rmtree(source, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)
