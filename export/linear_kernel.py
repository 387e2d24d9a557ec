"""hoe's int4 linear kernel in an exported graph (`hoe export --weights int4 --linear-kernel`).

    use_kernel(model) -> section    every MatMulNBits it computes ─► hoe.ort MatMulInt4, the same numbers
    pack(q) / unpack(tiles, ...)    a MatMulNBits weight <-> the kernel's layout (runtime/csrc/linear.h)

Layout, uint8 [ceil(N/64), ceil(K/32), 1280]: for each 64 output columns and 32 inputs, 1024 bytes of levels (4
slices of 16 columns, each 4 vectors of 64 bytes; byte 4c + t of vector j holds column c's level of input 8j + t
in its low nibble, of input 8j + 4 + t in its high one), then the 64 columns' fp32 scales. Padding columns and
inputs hold level 8 (zero) and scale 0. A block of 64, 128, ... inputs becomes its 32-input parts, each with the
block's scale, so the kernel computes exactly (q − 8) · scale, the MatMulNBits weight (BlockQuant.dequantize).

In the graph (after quantize.py and baked.py):

    MatMulNBits(x, B, scales, -, -, bias?)  ─►  MatMulInt4(x, B.tiles, bias?)   K, N, block_size, accuracy_level

Symmetric int4 products with fp32 scales in blocks of a multiple of 32 are converted: the base's linears, the
baked [W | lora_A | router_W] products with their bias, and the lm_head; what the kernel does not compute (int8
lora_B, zero points) stays MatMulNBits. The node keeps its name. A tied table's lookup then reads the lm_head's
tiles, so the file holds the table once:

    GatherBlockQuantized(Reshape(B), ids, scales)  ─►  GatherInt4(B.tiles, ids)   K, N   (row id = column id of W)

A baked group's fused product and its Mixture (baked.py, `--mixture-kernel`), the Mixture reading the product's
output as both Y and F, become one node: the same two computations, without the [B,T,N] tensor between them or a
second node's dispatch (120 nodes fewer per token on the embedded model). It keeps the Mixture's name and both
nodes' attributes:

    Mixture(F, F, router_mix, levels, scales, zeros, offsets?) on F = MatMulInt4(x, tiles, bias)
        ─►  MatMulInt4Mixture(x, tiles, bias, router_mix, levels, scales, zeros, offsets?)

Then the RMSNorm that feeds a product, and nothing else, becomes the product's prologue (runtime/csrc/norm.h): the
product reads x and the norm's gamma and computes the norm itself, and a residual sum x + skip becomes its last
output (60 nodes fewer per token on the embedded model: each is a dispatch of onnxruntime's for 576 numbers):

    SkipSimplifiedLayerNormalization(x, skip, gamma) ─► n, _, _, s;  MatMulInt4*(n, ...)
        ─►  MatMulInt4*(x, ..., skip, gamma) ─► ..., s                      epsilon
    SimplifiedLayerNormalization(x, gamma) ─► n;  MatMulInt4*(n, ...)  ─►  MatMulInt4*(x, ..., -, gamma)

And a SiLU MLP's gated activation after its gate/up product becomes the product's epilogue (runtime/csrc/
activation.h): the op writes silu(gate)·up in place of the two halves (90 nodes fewer per token on the embedded
model, 120 on its base: the Split too):

    MatMulInt4Mixture(...) ─► gate, up[, s];  Mul(Mul(gate, Sigmoid(gate)), up) ─► h   (modules 2, one width)
        ─►  MatMulInt4Mixture(...) ─► h[, s]                                            swiglu = 1
    MatMulInt4(...) ─► y[, s];  gate, up = Split(y, last axis, two equal halves);  the same Mul(...) ─► h
        ─►  MatMulInt4(...) ─► h[, s]                                                   swiglu = 1
"""

from __future__ import annotations

import numpy as np
from hoe.core.errors import ConfigError
from hoe.runtime.kernels import FUSED_OP, GATHER_OP, LINEAR_KERNEL, LINEAR_OP, MIXTURE_DOMAIN, MIXTURE_OP

from .quantize import MS_DOMAIN, BlockQuant, pack_levels

COLUMNS, INPUTS = 64, 32  # kLinearColumns, kLinearInputs
LEVEL_BYTES = COLUMNS * INPUTS // 2  # kLinearLevelBytes
STRIDE = LEVEL_BYTES + 4 * COLUMNS  # kLinearStride: bytes per (group, part)
TILES_SUFFIX = ".tiles"  # `{B}.tiles`: the initializer of MatMulNBits weight B in the kernel's layout
ZERO = 8  # a symmetric int4 level's zero point


def packable(q: BlockQuant) -> bool:
    """Whether the kernel computes this weight: symmetric int4, blocks of whole parts, float32 scales."""
    return (q.bits == 4 and q.zero_points is None and q.offsets is None and q.block_size % INPUTS == 0
            and q.scales.dtype == np.float32)


def pack(q: BlockQuant) -> np.ndarray:
    """A MatMulNBits weight in the kernel's layout (module docstring)."""
    if not packable(q):
        raise ConfigError(f"hoe's int4 linear kernel takes symmetric int4 weights with float32 scales in blocks of a "
                          f"multiple of {INPUTS}, got {q.bits} bits, block {q.block_size}, scales {q.scales.dtype}, "
                          f"zero points {q.zero_points is not None}, offsets {q.offsets is not None}")
    groups, parts = -(-q.n // COLUMNS), -(-q.k // INPUTS)
    levels = np.full((groups * COLUMNS, parts * INPUTS), ZERO, dtype=np.uint8)
    levels[: q.n, : q.k] = q.levels()[:, : q.k]
    scales = np.zeros((groups * COLUMNS, parts), dtype=np.float32)
    scales[: q.n] = np.repeat(q.scales, q.block_size // INPUTS, axis=1)[:, :parts]
    # [g, slice, c, p, j, nibble, t] -> bytes [g, p, slice, j, c, t]
    l7 = levels.reshape(groups, 4, 16, parts, 4, 2, 4)
    packed = (l7[..., 0, :] | (l7[..., 1, :] << 4)).transpose(0, 3, 1, 4, 2, 5).reshape(groups, parts, -1)
    tail = scales.reshape(groups, COLUMNS, parts).transpose(0, 2, 1).copy().view(np.uint8)
    return np.ascontiguousarray(np.concatenate([packed, tail], axis=2))


def unpack(tiles: np.ndarray, k: int, n: int, block_size: int) -> BlockQuant:
    """`pack`'s inverse: the MatMulNBits weight [K, N] in blocks of `block_size` that `tiles` holds."""
    groups, parts = tiles.shape[:2]
    data = tiles[:, :, :LEVEL_BYTES].reshape(groups, parts, 4, 4, 16, 4)  # [g, p, slice, j, c, t]
    l7 = np.stack([data & 0x0F, data >> 4], axis=-2)  # [g, p, slice, j, c, nibble, t]
    levels = l7.transpose(0, 2, 4, 1, 3, 5, 6).reshape(groups * COLUMNS, parts * INPUTS)[:n]
    scales = tiles[:, :, LEVEL_BYTES:].copy().view(np.float32)  # [g, p, 64]
    scales = scales.transpose(0, 2, 1).reshape(groups * COLUMNS, parts)[:n, :: block_size // INPUTS]
    k_blocks = -(-k // block_size)
    blocks = np.full((n, k_blocks * block_size), ZERO, dtype=np.uint8)
    blocks[:, :k] = levels[:, :k]
    return BlockQuant(pack_levels(blocks.reshape(n, k_blocks, block_size), 4), np.ascontiguousarray(scales), None,
                      4, block_size, k)


def tiled_weight(tiles) -> BlockQuant:
    """The weight held by a `{B}.tiles` initializer (onnx_ir.Value), from the MatMulInt4 (or MatMulInt4Mixture)
    node reading it."""
    node = tiles.uses()[0].node
    attrs = {name: node.attributes[name].as_int() for name in ("K", "N", "block_size")}
    return unpack(tiles.const_value.numpy(), attrs["K"], attrs["N"], attrs["block_size"])


# ---------------------------------------------------------------------------- the graph pass


def use_kernel(model) -> dict:
    """Every MatMulNBits of `model` (onnx_ir.Model) the kernel computes -> MatMulInt4, in place (module docstring).
    Returns the manifest's `quantization.linear_kernel` section (`lm_head`: whether the logits' product is one;
    `embedding`: whether a tied table's lookup reads the tiles; `mixtures`: the products fused with their Mixture;
    `norms`: the norms folded into the products they feed; `swiglu`: the SiLU gates folded into the products
    before them)."""
    import onnx_ir as ir

    graph, tiles, weights, converted, kept = model.graph, {}, {}, 0, 0
    for node in list(graph):
        if node.op_type != "MatMulNBits" or node.domain != MS_DOMAIN:
            continue
        q = _nbits_weight(node)
        if q is None or not packable(q):
            kept += 1
            continue
        b = node.inputs[1]
        if b.name not in tiles:  # a weight read by several products is packed once
            name = f"{b.name}{TILES_SUFFIX}"
            tiles[b.name] = ir.Value(name=name, const_value=ir.tensor(pack(q), name=name))
            weights[b.name] = q
            graph.register_initializer(tiles[b.name])
        bias = node.inputs[5] if len(node.inputs) > 5 else None
        level = node.attributes["accuracy_level"].as_int() if "accuracy_level" in node.attributes else 0
        attrs = {"K": q.k, "N": q.n, "block_size": q.block_size, "accuracy_level": level}
        new = ir.Node(MIXTURE_DOMAIN, LINEAR_OP, [node.inputs[0], tiles[b.name], *([bias] if bias else [])],
                      name=node.name, attributes=[ir.convenience.convert_attribute(k, v) for k, v in attrs.items()])
        _replace(graph, node, new)
        converted += 1
    gathers = sum(_tied_lookup(graph, node, tiles, weights) for node in list(graph))
    mixtures = sum(_fused_mixture(graph, node) for node in list(graph))
    norms = sum(_folded_norm(graph, node) for node in list(graph))
    swiglu = sum(_swiglu_epilogue(graph, node) for node in list(graph))
    for name in [n for n, v in graph.initializers.items() if not v.uses()]:  # B and scales now in the tiles
        graph.initializers.pop(name)
    if converted:
        model.opset_imports[MIXTURE_DOMAIN] = 1
    if not any(n.domain == MS_DOMAIN for n in graph):
        model.opset_imports.pop(MS_DOMAIN, None)
    head = _logits_product(graph)
    return {"kernel": LINEAR_KERNEL, "products": converted, "kept": kept,
            "lm_head": head is not None and head.op_type == LINEAR_OP, "embedding": gathers > 0, "mixtures": mixtures,
            "norms": norms, "swiglu": swiglu}


def _replace(graph, node, new) -> None:
    """`new` in `node`'s place: each of its outputs takes the old one's name, shape, type and uses."""
    graph.insert_before(node, new)
    for out, value in zip(node.outputs, new.outputs):
        _take_over(out, value)
    graph.remove(node, safe=True)


def _take_over(old, value) -> None:
    """`value` in `old`'s place: its name, shape, type and uses (graph outputs too)."""
    value.shape, value.type = old.shape, old.type
    old.replace_all_uses_with(value, replace_graph_outputs=True)
    value.name, old.name = old.name, None


def _tied_lookup(graph, node, tiles: dict, weights: dict) -> bool:
    """A GatherBlockQuantized of a tiled weight's rows (quantize.py's tied table: Reshape(B), ids, scales) ->
    GatherInt4 on the tiles, in place; whether it was one."""
    import onnx_ir as ir

    if node.op_type != "GatherBlockQuantized" or node.domain != MS_DOMAIN or len(node.inputs) > 3:
        return False  # zero points: not the kernel's symmetric grid
    reshape = node.inputs[0].producer()
    if reshape is None or reshape.op_type != "Reshape" or reshape.inputs[0].name not in tiles:
        return False
    want = {"gather_axis": 0, "quantize_axis": 1, "bits": 4}  # the op's defaults too
    attrs = {k: node.attributes[k].as_int() if k in node.attributes else v for k, v in want.items()}
    if attrs != want:
        return False
    q = weights[reshape.inputs[0].name]
    new = ir.Node(MIXTURE_DOMAIN, GATHER_OP, [tiles[reshape.inputs[0].name], node.inputs[1]], name=node.name,
                  attributes=[ir.convenience.convert_attribute(k, v) for k, v in {"K": q.k, "N": q.n}.items()])
    _replace(graph, node, new)
    if not reshape.outputs[0].uses():
        graph.remove(reshape, safe=True)
    return True


def _fused_mixture(graph, node) -> bool:
    """A Mixture reading one MatMulInt4's output as Y and F, and nothing else reading it -> one MatMulInt4Mixture
    in the Mixture's place (module docstring); whether it was one."""
    import onnx_ir as ir

    if node.op_type != MIXTURE_OP or node.domain != MIXTURE_DOMAIN or node.inputs[0] is not node.inputs[1]:
        return False
    f = node.inputs[0]
    product = f.producer()
    if product is None or product.op_type != LINEAR_OP or any(use.node is not node for use in f.uses()):
        return False
    if len(product.inputs) < 3 or product.inputs[2] is None:
        return False  # the baked product always has its router bias
    if product.attributes["block_size"].as_int() != node.attributes["block_size"].as_int():
        return False  # one attribute: the product's (tiled_weight) and the lora_B grid's block must agree
    attrs = {**dict(product.attributes.items()), **dict(node.attributes.items())}
    fused = ir.Node(MIXTURE_DOMAIN, FUSED_OP, [*product.inputs[:3], *node.inputs[2:]], name=node.name,
                    attributes=list(attrs.values()), num_outputs=len(node.outputs))
    _replace(graph, node, fused)
    graph.remove(product, safe=True)
    return True


NORM_OPS = {("com.microsoft", "SkipSimplifiedLayerNormalization"): 3, ("", "SimplifiedLayerNormalization"): 2}
PRODUCT_INPUTS = {LINEAR_OP: 3, FUSED_OP: 8}  # a product's inputs before the prologue's skip and gamma


def _folded_norm(graph, node) -> bool:
    """A norm (NORM_OPS: its data inputs) whose normed output only one MatMulInt4 or MatMulInt4Mixture reads, as
    its x, and whose statistics nothing reads -> that product with the norm as its prologue, in the product's place
    (module docstring); whether it was one."""
    import onnx_ir as ir

    inputs = NORM_OPS.get((node.domain, node.op_type))
    if inputs is None or len(node.inputs) != inputs or not node.outputs[0].uses():
        return False  # a SkipSimplifiedLayerNormalization's bias: not the prologue's
    uses = node.outputs[0].uses()
    product = uses[0].node
    if (len(uses) != 1 or uses[0].idx != 0 or product.domain != MIXTURE_DOMAIN
            or product.op_type not in PRODUCT_INPUTS or "epsilon" in product.attributes):
        return False
    if any(out.uses() or out.is_graph_output() for out in node.outputs[1:3]):
        return False  # mean / inv_std_var read
    residual = node.outputs[3] if len(node.outputs) > 3 else None
    if residual is not None and not (residual.uses() or residual.is_graph_output()):
        residual = None
    order = {n: i for i, n in enumerate(graph)}
    if residual is not None and any(order[use.node] < order[product] for use in residual.uses()):
        return False  # read between the norm and the product: the sum would come too late
    x, skip, gamma = node.inputs[0], node.inputs[1] if inputs == 3 else None, node.inputs[inputs - 1]
    kept = list(product.inputs[1:]) + [None] * (PRODUCT_INPUTS[product.op_type] - len(product.inputs))
    sums = 1 if skip is not None and (residual is not None or product.op_type == FUSED_OP) else 0
    epsilon = node.attributes["epsilon"].as_float() if "epsilon" in node.attributes else 1e-5  # the ops' default
    new = ir.Node(MIXTURE_DOMAIN, product.op_type, [x, *kept, skip, gamma], name=product.name,
                  attributes=[*product.attributes.values(),
                              ir.convenience.convert_attribute("epsilon", float(epsilon))],
                  num_outputs=len(product.outputs) + sums)
    _replace(graph, product, new)
    if residual is not None:
        _take_over(residual, new.outputs[-1])
    graph.remove(node, safe=True)
    return True


def _swiglu_epilogue(graph, node) -> bool:
    """A product whose two halves [gate | up] (a fused group of 2 modules of one width, or a MatMulInt4's output
    split in two) feed silu(gate)·up alone -> that product with the epilogue, writing silu(gate)·up in place of
    the halves (module docstring); whether it was one."""
    import onnx_ir as ir

    if node.domain != MIXTURE_DOMAIN or node.op_type not in PRODUCT_INPUTS or "swiglu" in node.attributes:
        return False
    halves = _halves(node)
    gated = halves and _silu_times(*halves[:2])
    if not gated:
        return False
    h, removed = gated[0], [*gated[1], *halves[2]]
    rest = node.outputs[halves[3]:]  # x + skip, if the product makes it
    new = ir.Node(MIXTURE_DOMAIN, node.op_type, list(node.inputs), name=node.name,
                  attributes=[*node.attributes.values(), ir.convenience.convert_attribute("swiglu", 1)],
                  num_outputs=1 + len(rest))
    graph.insert_before(node, new)
    for old, value in zip([h, *rest], new.outputs):
        _take_over(old, value)
    for dead in [*removed, node]:
        graph.remove(dead, safe=True)
    return True


def _halves(node):
    """(gate, up, nodes between, index of the product's first other output) of a product that makes [gate | up],
    or None."""
    if node.op_type == FUSED_OP:
        widths = [node.attributes[f"width_{i}"].as_int() for i in range(node.attributes["modules"].as_int())]
        if len(widths) != 2 or widths[0] != widths[1] or len(node.outputs) < 2:
            return None
        return node.outputs[0], node.outputs[1], [], 2
    uses = node.outputs[0].uses()
    split = uses[0].node if len(uses) == 1 else None
    if split is None or split.op_type != "Split" or split.domain != "" or len(split.outputs) != 2:
        return None
    n = node.attributes["N"].as_int()
    axis = split.attributes["axis"].as_int() if "axis" in split.attributes else 0
    shape = node.outputs[0].shape
    if axis != -1 and (shape is None or axis != len(shape) - 1):
        return None
    sizes = split.inputs[1] if len(split.inputs) > 1 else None
    if sizes is not None and (sizes.const_value is None or list(sizes.const_value.numpy()) != [n // 2, n // 2]):
        return None
    if n % 2 or any(out.is_graph_output() for out in split.outputs):
        return None
    return split.outputs[0], split.outputs[1], [split], 1


def _silu_times(gate, up):
    """(h, its nodes last first) when Mul(Mul(gate, Sigmoid(gate)), up) -> h reads gate and up alone, or None."""
    def single_use(value):
        uses = value.uses()
        return uses[0].node if len(uses) == 1 and not value.is_graph_output() else None

    final = single_use(up)
    if gate.is_graph_output() or final is None or final.op_type != "Mul" or final.domain != "":
        return None
    silu = final.inputs[1 - final.inputs.index(up)].producer() if list(final.inputs).count(up) == 1 else None
    if silu is None or silu.op_type != "Mul" or silu.domain != "" or single_use(silu.outputs[0]) is not final:
        return None
    sigmoid = next((v.producer() for v in silu.inputs if v is not gate), None)
    if (sigmoid is None or sigmoid.op_type != "Sigmoid" or sigmoid.domain != "" or sigmoid.inputs[0] is not gate
            or list(silu.inputs).count(gate) != 1 or single_use(sigmoid.outputs[0]) is not silu
            or {use.node for use in gate.uses()} != {sigmoid, silu}):
        return None
    return final.outputs[0], [final, silu, sigmoid]


def _logits_product(graph):
    """The product that makes the logits (graph output 0): their producer past Reshape/Identity, and with block
    offsets past the y₀ + (x·S)·offsets correction to the product before its Split (quantize._offset_product)."""
    node = graph.outputs[0].producer()
    while node is not None and node.op_type in ("Reshape", "Identity", "Add"):
        source = node.inputs[0].producer()
        if node.op_type == "Add":
            if source is None or source.op_type != "Split":
                break
            source = source.inputs[0].producer()
        node = source
    return node


def _nbits_weight(node) -> BlockQuant | None:
    """A MatMulNBits node's weight from its initializers, or None when it is not all constant or has g_idx."""
    b, scales = node.inputs[1], node.inputs[2]
    extra = [node.inputs[i] if i < len(node.inputs) else None for i in (3, 4)]  # zero points, g_idx
    if b.const_value is None or scales.const_value is None or extra[1] is not None:
        return None
    if extra[0] is not None and extra[0].const_value is None:
        return None
    attrs = {name: node.attributes[name].as_int() for name in ("K", "bits", "block_size")}
    packed = b.const_value.numpy()
    zero_points = None if extra[0] is None else extra[0].const_value.numpy()
    return BlockQuant(packed, scales.const_value.numpy().reshape(packed.shape[:2]), zero_points, attrs["bits"],
                      attrs["block_size"], attrs["K"])
