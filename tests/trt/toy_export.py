"""A toy exported folder that follows docs/FORMAT.md's contract (same input/output names, symbolic dims,
KV naming, experts/routers as graph inputs) with a small hand-written ONNX graph, so the TensorRT code
paths can be tested without the exporter: causal (CumSum over the masked KV), so prefill + decode through
a KV cache must equal one full forward, and every expert/router input changes the logits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

VOCAB, LAYERS, KV_HEADS, HEAD_DIM = 11, 2, 1, 4
MODULE = "model.layers.0.mlp.down_proj"
N_EXPERTS, RANK, N_ROUTERS = 3, 2, 4


def _inputs() -> dict:
    kv = {f"past_key_values.{i}.{w}": {"dtype": "float32", "shape": ["batch", KV_HEADS, "past_sequence", HEAD_DIM]}
          for i in range(LAYERS) for w in ("key", "value")}
    hoe = {f"experts.{MODULE}.lora_A": {"dtype": "float32", "shape": ["experts", "rank", HEAD_DIM]},
           f"experts.{MODULE}.lora_B": {"dtype": "float32", "shape": ["experts", HEAD_DIM, "rank"]},
           f"experts.{MODULE}.scaling": {"dtype": "float32", "shape": ["experts"]},
           "routers.mask": {"dtype": "float32", "shape": ["routers", "experts"]},
           f"routers.{MODULE}.weight": {"dtype": "float32", "shape": ["routers", "experts", HEAD_DIM]},
           f"routers.{MODULE}.bias": {"dtype": "float32", "shape": ["routers", "experts"]}}
    return {"input_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
            "attention_mask": {"dtype": "int64", "shape": ["batch", "total_sequence"]},
            "position_ids": {"dtype": "int64", "shape": ["batch", "sequence"]},
            "router_mix": {"dtype": "float32", "shape": ["batch", "routers"]}, **kv, **hoe}


def _outputs() -> dict:
    out = {"logits": {"dtype": "float32", "shape": ["batch", "sequence", VOCAB]}}
    for i in range(LAYERS):
        for w in ("key", "value"):
            out[f"present.{i}.{w}"] = {"dtype": "float32", "shape": ["batch", KV_HEADS, "total_sequence", HEAD_DIM]}
    return out


def manifest(sha: dict | None = None) -> dict:
    inputs = _inputs()
    return {
        "format_version": 2,
        "model": {"file": "model.onnx", "external_data": None, "dtype": "fp32", "opset": 18},
        "architecture": {"model_type": "llama", "num_layers": LAYERS, "num_attention_heads": 1,
                         "num_kv_heads": KV_HEADS, "head_dim": HEAD_DIM, "hidden_size": HEAD_DIM, "vocab_size": VOCAB,
                         "max_position_embeddings": 64},
        "inputs": inputs, "outputs": _outputs(),
        "kv_cache": {"past_key": "past_key_values.%d.key", "past_value": "past_key_values.%d.value",
                     "present_key": "present.%d.key", "present_value": "present.%d.value"},
        "hoe": {"objectives": ["a", "b", "c"], "expert_names": ["a", "b", "c"], "expert_prefs": np.eye(3).tolist(),
                "anchors": np.eye(3).tolist() + [[1 / 3] * 3], "n_active": 3, "n_route": 3, "rank": RANK,
                "n_experts": N_EXPERTS, "n_routers": N_ROUTERS, "target_modules": [MODULE],
                "expert_inputs": [n for n in inputs if n.startswith("experts.")],
                "router_inputs": [n for n in inputs if n.startswith("routers.")]},
        "files": {"experts": "experts.safetensors", "routers": "routers.safetensors"},
        "tokens": {"eos_token_ids": [2], "pad_token_id": 0, "bos_token_id": 1},
        "sha256": sha or {},
    }


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = _inputs()
    sizes = {"experts": N_EXPERTS, "rank": RANK, "routers": N_ROUTERS}
    out = {}
    for name, s in spec.items():
        if name.startswith(("experts.", "routers.")):
            shape = [d if isinstance(d, int) else sizes[d] for d in s["shape"]]
            out[name] = rng.normal(0, 1, shape).astype(np.float32)
    out["routers.mask"] = (rng.random((N_ROUTERS, N_EXPERTS)) > 0.3).astype(np.float32)
    return out


def graph(path: Path, seed: int = 0) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed + 1)
    spec, outs = _inputs(), _outputs()
    c = lambda name, arr: numpy_helper.from_array(np.asarray(arr), name)  # noqa: E731
    inits = [c("emb", rng.normal(0, 1, (VOCAB, HEAD_DIM)).astype(np.float32)),
             c("w_out", rng.normal(0, 1, (HEAD_DIM, VOCAB)).astype(np.float32)),
             c("pos_scale", np.array(0.01, np.float32)), c("hoe_scale", np.array(0.01, np.float32)),
             c("ax1", np.array([1], np.int64)), c("ax_last", np.array([-1], np.int64)),
             c("one", np.array([1], np.int64)), c("big", np.array([1 << 30], np.int64)),
             c("ax2", np.array([2], np.int64))]
    n = helper.make_node
    nodes = [
        n("Gather", ["emb", "input_ids"], ["x"]),  # [B,T,hd]
        n("Cast", ["position_ids"], ["posf"], to=TensorProto.FLOAT),
        n("Mul", ["posf", "pos_scale"], ["pos_s"]), n("Unsqueeze", ["pos_s", "ax_last"], ["pos3"]),
        n("Add", ["x", "pos3"], ["xk"]), n("Unsqueeze", ["xk", "ax1"], ["new_k"]),  # [B,1,T,hd]
        n("Cast", ["attention_mask"], ["maskf"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["maskf", "ax1"], ["m3"]), n("Unsqueeze", ["m3", "ax_last"], ["m4"]),  # [B,1,S,1]
        n("Shape", ["input_ids"], ["ids_shape"]),
        n("Slice", ["ids_shape", "one", "ax2"], ["t_len"]),  # [T]
        n("Neg", ["t_len"], ["neg_t"]),
    ]
    total = None
    for i in range(LAYERS):
        nodes += [n("Mul", ["new_k", c_name := f"layer_scale{i}"], [f"new_v{i}"])]
        inits.append(c(c_name, np.array(float(i + 2), np.float32)))
        for w, new in (("key", "new_k"), ("value", f"new_v{i}")):
            present = f"present.{i}.{w}"
            nodes += [n("Concat", [f"past_key_values.{i}.{w}", new], [present], axis=2),
                      n("Mul", [present, "m4"], [f"mk{i}{w}"]),
                      n("CumSum", [f"mk{i}{w}", "ax2"], [f"cs{i}{w}"]),
                      n("Slice", [f"cs{i}{w}", "neg_t", "big", "ax2"], [f"ctx{i}{w}"])]  # [B,1,T,hd]
            term = f"ctx{i}{w}"
            if total is None:
                total = term
            else:
                nodes.append(n("Add", [total, term], [f"sum{i}{w}"]))
                total = f"sum{i}{w}"
    hoe_names = [k for k in spec if k.startswith(("experts.", "routers.")) and k != "routers.mask"]
    nodes += [n("Squeeze", [total, "ax1"], ["h"]), n("MatMul", ["h", "w_out"], ["base_logits"])]
    acc = None
    for k, name in enumerate(hoe_names):
        nodes.append(n("ReduceSum", [name], [f"rs{k}"], keepdims=0))
        if acc is None:
            acc = f"rs{k}"
        else:
            nodes.append(n("Add", [acc, f"rs{k}"], [f"acc{k}"]))
            acc = f"acc{k}"
    bias = f"routers.{MODULE}.bias"
    nodes += [n("Mul", [acc, "hoe_scale"], ["e_term"]),
              n("Mul", [bias, "routers.mask"], ["mb"]), n("ReduceSum", ["mb", "ax1"], ["rk"], keepdims=1),  # [K,1]
              n("MatMul", ["router_mix", "rk"], ["r2"]), n("Unsqueeze", ["r2", "ax_last"], ["r3"]),  # [B,1,1]
              n("Add", ["base_logits", "e_term"], ["l1"]), n("Add", ["l1", "r3"], ["logits"])]
    types = {"float32": TensorProto.FLOAT, "int64": TensorProto.INT64}
    g = helper.make_graph(nodes, "toy_hoe",
                          [helper.make_tensor_value_info(k, types[v["dtype"]], v["shape"]) for k, v in spec.items()],
                          [helper.make_tensor_value_info(k, types[v["dtype"]], v["shape"]) for k, v in outs.items()],
                          inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_folder(folder: Path, seed: int = 0) -> Path:
    """Write a complete toy exported folder; returns it."""
    from hoe.core.config import sha256_file
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    graph(folder / "model.onnx", seed)
    t = tensors(seed)
    save_file({k: v for k, v in t.items() if k.startswith("experts.")}, str(folder / "experts.safetensors"))
    save_file({k: v for k, v in t.items() if k.startswith("routers.")}, str(folder / "routers.safetensors"))
    sha = {f: sha256_file(folder / f) for f in ("model.onnx", "experts.safetensors", "routers.safetensors")}
    (folder / "hoe_config.json").write_text(json.dumps(manifest(sha), indent=2))
    return folder


def ort_session(folder: Path):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(folder / "model.onnx"), so, providers=["CPUExecutionProvider"])


def full_forward_logits(folder: Path, ids: np.ndarray, mask: np.ndarray, pos: np.ndarray, mix: np.ndarray):
    """Reference: one forward over the whole sequence with an empty cache -> logits [B, T, V]."""
    from safetensors.numpy import load_file

    sess = ort_session(folder)
    feed = {"input_ids": ids, "attention_mask": mask, "position_ids": pos, "router_mix": mix}
    feed.update(load_file(str(folder / "experts.safetensors")))
    feed.update(load_file(str(folder / "routers.safetensors")))
    for i in range(LAYERS):
        for w in ("key", "value"):
            feed[f"past_key_values.{i}.{w}"] = np.zeros((ids.shape[0], KV_HEADS, 0, HEAD_DIM), np.float32)
    return sess.run(["logits"], feed)[0]
