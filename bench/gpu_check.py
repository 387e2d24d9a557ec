"""GPU check: one prepared script that records a GPU machine's stack and the PyTorch decode latency of a
SmolLM2-135M-shaped HoE model against the plain base model. Writes one JSON file and prints a table.

    python bench/gpu_check.py --out bench/results/gpu_check_h100.json        # repo copied, not installed
    python -m hoe.bench.gpu_check --out gpu_check.json                       # installed package
    python bench/gpu_check.py --device cpu --quick --tiny --out /tmp/g.json  # CPU smoke test (seconds)

Sections (each one recorded even when another fails; an error is kept as text in the JSON):
  system, packages, gpu (name, driver, CUDA, memory), onnxruntime (providers, and a small HoE-mixing
  graph run on the CUDA provider when there is one, with the provider that actually ran),
  tensorrt / cuda-python (import and version), latency (decode ms/token, median and p90, fp32/fp16,
  batch 1/4, HoE vs base, after warmup, synchronised).

The model has SmolLM2-135M's shapes (30 layers, hidden 576, 9/3 heads, intermediate 1536, vocab
49152, tied embeddings, rope_theta 1e5) with random weights: the real weights cannot travel to the
GPU machine, and latency does not depend on weight values. The HoE model adds three rank-16 LoRA
experts on every linear of every block and four random routers (3 vertex anchors + the uniform one).
The JSON is rewritten after every section, so a run cut short still leaves what it measured.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def ensure_hoe_importable() -> str:
    """Make `import hoe.core` work from a copied repository without installing it. -> how it was found.

    Not installed: a temporary `hoe/` namespace package whose subpackages link to this repository's folders,
    as pyproject.toml's [tool.setuptools.package-dir] maps them (hoe.core -> hoe_core/, ...)."""
    if sys.path and Path(sys.path[0] or ".").resolve() == Path(__file__).resolve().parent:
        sys.path.pop(0)  # run as a script: bench/ must not shadow stdlib or top-level modules
    try:
        importlib.import_module("hoe.core")
        return "installed package"
    except ImportError:
        pass
    for key in [k for k in sys.modules if k == "hoe" or k.startswith("hoe.")]:
        del sys.modules[key]
    root = Path(tempfile.mkdtemp(prefix="hoe_gpu_check_"))
    text = (_REPO / "pyproject.toml").read_text(encoding="utf-8")
    for name, folder in re.findall(r'"hoe\.(\w+)"\s*=\s*"(\w+)"', text):
        (root / "hoe").mkdir(exist_ok=True)
        (root / "hoe" / name).symlink_to(_REPO / folder, target_is_directory=True)
    sys.path.insert(0, str(root))
    importlib.import_module("hoe.core")
    return f"repository shim ({_REPO})"


# ---------------------------------------------------------------------------- result recording


class Report:
    """The JSON being built; every section is run guarded and the file is rewritten after each."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.data: dict = {"schema": "hoe.gpu_check/1", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                           "sections": {}, "errors": {}}
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def section(self, name: str, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            result = fn(*args, **kwargs)
            self.data["sections"][name] = result
        except BaseException as e:  # noqa: BLE001 - the one place where every failure is recorded, not raised
            if isinstance(e, KeyboardInterrupt):
                raise
            self.data["errors"][name] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=6)}"
            result = None
        self.data.setdefault("section_seconds", {})[name] = round(time.perf_counter() - start, 2)
        self.write()
        return result

    def write(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 2)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        from hoe.core.atomic import atomic_write_text

        atomic_write_text(self.out, json.dumps(self.data, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------- environment sections


def system_info(import_route: str) -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "hoe_import": import_route, "argv": sys.argv}
    info["git_commit"] = _run(["git", "-C", str(_REPO), "rev-parse", "HEAD"])
    return info


def package_versions() -> dict:
    from hoe.bench.machine import versions

    return versions(("torch", "transformers", "onnx", "onnxruntime", "onnxruntime-gpu", "onnxscript", "numpy",
                     "safetensors", "tokenizers", "peft", "tensorrt", "cuda-python", "cuda-bindings", "triton"))


def gpu_info() -> dict:
    import torch

    info = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    smi = _run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap", "--format=csv,noheader"])
    info["nvidia_smi"] = smi
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_count=torch.cuda.device_count(), name=props.name,
                    compute_capability=f"{props.major}.{props.minor}",
                    total_memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, cudnn=torch.backends.cudnn.version(),
                    tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
        if isinstance(smi, str) and smi and "," in smi:
            info["driver"] = smi.splitlines()[0].split(",")[1].strip()
    return info


def onnxruntime_info() -> dict:
    import onnxruntime as ort

    return {"version": ort.__version__, "device": ort.get_device(),
            "available_providers": ort.get_available_providers()}


def tensorrt_info() -> dict:
    info: dict = {}
    try:
        import tensorrt as trt

        info.update(imports=True, version=trt.__version__)
        builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
        info["builder_created"] = builder is not None
    except ImportError as e:
        info.update(imports=False, error=str(e))
    for module in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            importlib.import_module(module)
            info["cuda_python"] = module
            break
        except ImportError:
            info["cuda_python"] = None
    return info


def cuda_memory_section() -> dict:
    """Round trip through each CUDA binding the trt backend can use (runtime/backends/cuda_memory.py):
    host -> device -> device -> host, plus a copy from an offset (how the last position's logits are read)."""
    import numpy as np
    from hoe.runtime.backends import cuda_memory

    out = {}
    for kind in ("cuda-python", "torch", "ctypes"):
        try:
            mem = cuda_memory.select(kind)
            stream = mem.new_stream()
            a = np.arange(1000, dtype=np.float32)
            b, c = np.empty_like(a), np.empty(10, np.float32)
            p1, p2 = mem.alloc(a.nbytes), mem.alloc(a.nbytes)
            mem.h2d(p1, a, stream)
            mem.d2d(p2, p1, a.nbytes, stream)
            mem.d2h(b, p2, stream)
            mem.d2h(c, p2 + 40, stream)
            mem.sync(stream)
            out[kind] = {"ok": bool((a == b).all() and (c == a[10:20]).all()), "device": mem.device_info()}
            mem.free(p1)
            mem.free(p2)
        except Exception as e:  # noqa: BLE001 - recorded per binding
            out[kind] = {"error": f"{type(e).__name__}: {e}"}
    return out


# ---------------------------------------------------------------------------- models


SMOLLM2_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                     rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
TINY_SHAPE = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)
ROPE_THETA = 1e5


def llama_config(shape: dict):
    """A LlamaConfig with rope_theta set the way the installed transformers takes it."""
    import inspect

    from transformers import LlamaConfig

    params = inspect.signature(LlamaConfig.__init__).parameters
    rope = ({"rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA}} if "rope_parameters" in params
            else {"rope_theta": ROPE_THETA})
    return LlamaConfig(**shape, **rope)


def effective_rope_theta(cfg) -> float | None:
    rope = getattr(cfg, "rope_parameters", None)
    if isinstance(rope, dict) and "rope_theta" in rope:
        return float(rope["rope_theta"])
    theta = getattr(cfg, "rope_theta", None)
    return float(theta) if theta is not None else None


def build_models(shape: dict, n_experts: int, rank: int, device: str, seed: int = 0):
    """(plain base, HoE model, router count, description), both fp32 on `device`, eval mode: random
    non-zero experts, vertex + uniform anchors, random routers, built by hoe.core's own assembly."""
    import copy

    import torch
    from hoe.core.assemble import build_checkpoint, in_features
    from hoe.core.experts import LoraFactors
    from hoe.core.loading import hoe_from_checkpoint
    from hoe.core.model import find_target_modules
    from hoe.core.routers import trainable_routers, vertex_anchors
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = llama_config(shape)
    base = AutoModelForCausalLM.from_config(cfg).to(torch.float32).eval()
    plain = copy.deepcopy(base)
    modules, g = find_target_modules(base), torch.Generator().manual_seed(seed)
    shapes = {m: (base.get_submodule(m).in_features, base.get_submodule(m).out_features) for m in modules}
    experts = [{m: LoraFactors(torch.randn(rank, d_in, generator=g) / d_in**0.5, torch.randn(d_out, rank, generator=g)
                               * 0.02, 2.0) for m, (d_in, d_out) in shapes.items()} for _ in range(n_experts)]
    eye = vertex_anchors(n_experts)
    anchors = eye + [[1.0 / n_experts] * n_experts]
    routers = trainable_routers(modules, in_features(base, modules), eye, anchors, n_experts, init_std=0.05, seed=seed)
    ckpt = build_checkpoint(base, experts, modules, [f"obj{i}" for i in range(n_experts)], anchors=anchors,
                            routers=routers)
    hoe = hoe_from_checkpoint(base, ckpt).eval()
    n_params = sum(p.numel() for p in plain.parameters())
    n_hoe = sum(t.numel() for t in hoe.named_tensors().values())
    desc = {"weights": "random (latency does not depend on weight values; real SmolLM2 weights not used)",
            "shape": shape, "rope_theta": effective_rope_theta(cfg), "base_params": n_params,
            "hoe_extra_params": n_hoe, "target_modules": len(modules), "n_experts": n_experts, "rank": rank,
            "n_routers": len(anchors), "attn_implementation": getattr(cfg, "_attn_implementation", None)}
    return plain.to(device), hoe.to(device), len(anchors), desc


# ---------------------------------------------------------------------------- latency


def _sync(device: str):
    import torch

    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def decode_latency(forward, batch: int, vocab: int, prompt_len: int, warmup: int, steps: int, device: str,
                   seed: int = 0) -> dict:
    """Prefill a random prompt, then time `warmup + steps` greedy decode steps one by one (synchronised).

    forward(input_ids, attention_mask, position_ids, cache) -> (logits, cache).
    """
    import torch
    from hoe.bench.timing import summary

    sync = _sync(device)
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (batch, prompt_len), generator=g).to(device)
    mask = torch.ones(batch, prompt_len, dtype=torch.long, device=device)
    pos = torch.arange(prompt_len, device=device).expand(batch, -1)
    with torch.inference_mode():
        sync()
        t = time.perf_counter()
        logits, cache = forward(ids, mask, pos, None)
        sync()
        prefill_ms = (time.perf_counter() - t) * 1e3
        times = []
        for i in range(warmup + steps):
            token = logits[:, -1].argmax(-1, keepdim=True)  # [B, 1]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
            pos = pos[:, -1:] + 1
            sync()
            t = time.perf_counter()
            logits, cache = forward(token, mask, pos, cache)
            sync()
            if i >= warmup:
                times.append((time.perf_counter() - t) * 1e3)
    if not torch.isfinite(logits).all():
        raise FloatingPointError("non-finite logits during decode")
    stats = summary(times)
    return {"median_ms": round(stats["median"], 3), "p90_ms": round(stats["p90"], 3),
            "mean_ms": round(sum(times) / len(times), 3), "min_ms": round(stats["min"], 3),
            "tokens_per_s": round(1e3 * batch / stats["median"], 1), "prefill_ms": round(prefill_ms, 3),
            "steps": steps, "warmup": warmup, "prompt_len": prompt_len}


def cache_check(hoe, n_routers: int, vocab: int, device: str, prompt_len: int = 12) -> dict:
    """Decoding through the KV cache must give the logits of a full forward (fp32): proves the cache
    argument reaches the model under the installed transformers version."""
    import torch

    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, vocab, (2, prompt_len + 1), generator=g).to(device)
    mask = torch.ones_like(ids)
    pos = torch.arange(prompt_len + 1, device=device).expand(2, -1)
    mix = torch.full((2, n_routers), 1.0 / n_routers, device=device)
    with torch.inference_mode():
        full, _ = hoe(ids, mix, attention_mask=mask, position_ids=pos)
        _, cache = hoe(ids[:, :-1], mix, attention_mask=mask[:, :-1], position_ids=pos[:, :-1])
        step, _ = hoe(ids[:, -1:], mix, attention_mask=mask, position_ids=pos[:, -1:], cache=cache)
    diff = float((full[:, -1] - step[:, -1]).abs().max())
    return {"max_abs_diff_decode_vs_full": diff, "ok": diff < 1e-3}


def latency_section(args, report: Report) -> dict:
    import torch
    from hoe.core.model import cache_kwarg, output_cache

    device = args.device
    shape = TINY_SHAPE if args.tiny else SMOLLM2_SHAPE
    plain, hoe, n_routers, desc = build_models(shape, n_experts=3, rank=16, device=device)
    plain_cache = cache_kwarg(plain)
    out = {"model": desc, "device": device, "cache_kwarg": plain_cache, "results": [], "skipped": []}
    out["cache_check"] = cache_check(hoe, n_routers, shape["vocab_size"], device)
    torch_dtypes = {"fp32": torch.float32, "fp16": torch.float16}
    for dtype in args.dtypes:
        plain.to(torch_dtypes[dtype])
        hoe.to(torch_dtypes[dtype])

        def run_plain(ids, mask, pos, cache):
            o = plain(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{plain_cache: cache})
            return o.logits, output_cache(o)

        for batch in args.batches:
            mix = torch.full((batch, n_routers), 1.0 / n_routers, device=device)

            def run_hoe(ids, mask, pos, cache, mix=mix):
                return hoe(ids, mix, attention_mask=mask, position_ids=pos, cache=cache)

            for label, fwd in (("base", run_plain), ("hoe", run_hoe)):
                key = {"dtype": dtype, "batch": batch, "model": label}
                if report.elapsed() > args.budget_s:
                    out["skipped"].append({**key, "reason": f"time budget {args.budget_s}s spent"})
                    continue
                try:
                    res = decode_latency(fwd, batch, shape["vocab_size"], args.prompt_len, args.warmup, args.steps,
                                         device)
                    out["results"].append({**key, **res})
                except Exception as e:  # noqa: BLE001 - record and go on with the next configuration
                    out["results"].append({**key, "error": f"{type(e).__name__}: {e}"})
                report.data["sections"]["latency"] = out
                report.write()
    out["ratios"] = _ratios(out["results"])
    return out


def _ratios(results: list[dict]) -> list[dict]:
    by_key = {(r["dtype"], r["batch"], r["model"]): r for r in results if "median_ms" in r}
    ratios = []
    for (dtype, batch, model), r in by_key.items():
        base = by_key.get((dtype, batch, "base"))
        if model == "hoe" and base:
            ratio = round(r["median_ms"] / base["median_ms"], 3)
            ratios.append({"dtype": dtype, "batch": batch, "hoe_over_base_median": ratio})
    return ratios


# ---------------------------------------------------------------------------- onnxruntime providers


def ort_mixing_section(args) -> dict:
    """A small graph of one HoE linear (routers -> masked softmax -> gated LoRA mixture + base matmul),
    run on the CUDA provider when onnxruntime offers it (else on CPU, to show the fallback is reported),
    compared with numpy and timed. Node placement comes from an onnxruntime profile."""
    import numpy as np
    import onnxruntime as ort
    from hoe.runtime.backends import ort_providers as op

    rng = np.random.default_rng(0)
    d_in, d_out, e, r, k = (64, 96, 3, 8, 4) if args.tiny else (576, 1536, 3, 16, 4)
    b, t = 4, 1
    w = {"W": rng.normal(0, 0.05, (d_in, d_out)), "A": rng.normal(0, 0.1, (d_in, e * r)),
         "B": rng.normal(0, 0.1, (e * r, d_out)), "RW": rng.normal(0, 0.1, (d_in, k * e)),
         "Rb": rng.normal(0, 0.1, (k * e,)),
         "mask": np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=np.float64)[:k]}
    w = {n: v.astype(np.float32) for n, v in w.items()}
    x = rng.normal(0, 1, (b, t, d_in)).astype(np.float32)
    mix = np.full((b, k), 1.0 / k, dtype=np.float32)
    path = Path(tempfile.mkdtemp(prefix="hoe_gpu_check_")) / "mixing.onnx"
    _mixing_graph(path, w, d_in, d_out, e, r, k)
    expected = _mixing_numpy(x, mix, w, e, r, k)
    requested = ["cuda"] if "CUDAExecutionProvider" in ort.get_available_providers() else ["cpu"]
    out = {"shape": {"batch": b, "tokens": t, "d_in": d_in, "d_out": d_out, "experts": e, "rank": r, "routers": k}}
    for label, req in (("requested_cuda", ["cuda"]), ("cpu", ["cpu"])):
        if label == "requested_cuda" and requested == ["cpu"]:
            out["note"] = "onnxruntime has no CUDAExecutionProvider here: the CUDA request below shows the fallback"
        out[label] = _run_ort(path, req, x, mix, expected, op, args)
    return out


def _run_ort(path: Path, requested: list[str], x, mix, expected, op, args) -> dict:
    import numpy as np
    import onnxruntime as ort
    from hoe.bench.timing import summary, time_calls

    so = ort.SessionOptions()
    so.enable_profiling = True
    so.profile_file_prefix = str(path.parent / f"profile_{requested[0]}")
    so.log_severity_level = 3
    so.intra_op_num_threads = 1
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    names, options = op.provider_options(requested, path.parent)
    sess = ort.InferenceSession(str(path), sess_options=so, providers=names, provider_options=options)
    res = {"requested": names, "active": op.active_providers(sess),
           "fallback": op.check_used(names, op.active_providers(sess))}
    feed = {"x": x, "router_mix": mix}
    y = sess.run(None, feed)[0]
    res["max_abs_diff_vs_numpy"] = float(np.abs(y - expected).max())
    times = time_calls(lambda: sess.run(None, feed), 5 if args.quick else 50, warmup=0)
    res["median_ms"] = round(summary(times)["median"], 4)
    res["node_placement"] = op.node_placement(sess.end_profiling())
    return res


def _mixing_graph(path: Path, w: dict, d_in: int, d_out: int, e: int, r: int, k: int) -> None:
    """ONNX of one HoE linear for x [B,T,in], router_mix [B,K] -> y [B,T,out] (opset 18)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name, arr):
        return numpy_helper.from_array(np.asarray(arr), name)

    inits = [const(n, v) for n, v in w.items()] + [
        const("shape_kE", np.array([0, 0, k, e], np.int64)), const("shape_er", np.array([0, 0, e, r], np.int64)),
        const("shape_flat", np.array([0, 0, e * r], np.int64)), const("ax_mix", np.array([1, 3], np.int64)),
        const("ax2", np.array([2], np.int64)), const("ax3", np.array([3], np.int64)),
        const("zero", np.array(0, np.float32)), const("neg_inf", np.array(-np.inf, np.float32))]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["base"]),
        helper.make_node("MatMul", ["x", "RW"], ["rl0"]), helper.make_node("Add", ["rl0", "Rb"], ["rl1"]),
        helper.make_node("Reshape", ["rl1", "shape_kE"], ["logits"]),  # [B,T,K,E]
        helper.make_node("Greater", ["mask", "zero"], ["active"]),  # [K,E]
        helper.make_node("Where", ["active", "logits", "neg_inf"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["probs"], axis=-1),
        helper.make_node("Unsqueeze", ["router_mix", "ax_mix"], ["mix4"]),  # [B,1,K,1]
        helper.make_node("Mul", ["probs", "mix4"], ["wp"]),
        helper.make_node("ReduceSum", ["wp", "ax2"], ["gates"], keepdims=0),  # [B,T,E]
        helper.make_node("Unsqueeze", ["gates", "ax3"], ["g4"]),  # [B,T,E,1]
        helper.make_node("MatMul", ["x", "A"], ["h"]), helper.make_node("Reshape", ["h", "shape_er"], ["h4"]),
        helper.make_node("Mul", ["h4", "g4"], ["hg"]), helper.make_node("Reshape", ["hg", "shape_flat"], ["hf"]),
        helper.make_node("MatMul", ["hf", "B"], ["delta"]), helper.make_node("Add", ["base", "delta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "hoe_mixing",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", d_in]),
         helper.make_tensor_value_info("router_mix", TensorProto.FLOAT, ["batch", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "sequence", d_out])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _mixing_numpy(x, mix, w, e, r, k):
    import numpy as np

    logits = (x @ w["RW"] + w["Rb"]).reshape(*x.shape[:2], k, e)
    logits = np.where(w["mask"] > 0, logits, -np.inf)
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    gates = (p * mix[:, None, :, None]).sum(2)  # [B,T,E]
    h = (x @ w["A"]).reshape(*x.shape[:2], e, r) * gates[..., None]
    return x @ w["W"] + h.reshape(*x.shape[:2], e * r) @ w["B"]


# ---------------------------------------------------------------------------- summary


def summary_table(data: dict) -> str:
    s = data.get("sections", {})
    gpu = s.get("gpu") or {}
    ort = s.get("onnxruntime") or {}
    trt = s.get("tensorrt") or {}
    lines = [f"device: {gpu.get('name', 'no CUDA device')}  driver {gpu.get('driver')}  torch {gpu.get('torch')} "
             f"(CUDA {gpu.get('torch_cuda')})",
             f"onnxruntime {ort.get('version')}: {ort.get('available_providers')}",
             f"tensorrt imports: {trt.get('imports')} {trt.get('version', '')}  cuda-python: {trt.get('cuda_python')}"]
    lat = s.get("latency") or {}
    if lat.get("results"):
        lines.append(f"{'dtype':6} {'batch':>5} {'model':6} {'median ms':>10} {'p90 ms':>8} {'tok/s':>9}")
        for r in lat["results"]:
            if "median_ms" in r:
                lines.append(f"{r['dtype']:6} {r['batch']:>5} {r['model']:6} {r['median_ms']:>10.2f} "
                             f"{r['p90_ms']:>8.2f} {r['tokens_per_s']:>9.1f}")
            else:
                lines.append(f"{r['dtype']:6} {r['batch']:>5} {r['model']:6} error: {r['error'][:60]}")
        check = lat.get("cache_check") or {}
        diff = check.get("max_abs_diff_decode_vs_full")
        lines.append(f"KV-cache check (decode vs full forward, fp32): max diff {diff}")
        for q in lat.get("ratios", []):
            lines.append(f"HoE / base ({q['dtype']}, batch {q['batch']}): {q['hoe_over_base_median']:.2f}x")
    mixing = s.get("ort_mixing") or {}
    for label in ("requested_cuda", "cpu"):
        m = mixing.get(label)
        if m:
            lines.append(f"ORT mixing graph [{label}]: active {m['active']}, nodes {m['node_placement']}, "
                         f"{m['median_ms']} ms, max diff {m['max_abs_diff_vs_numpy']:.2e}")
    for kind, res in (s.get("cuda_memory") or {}).items():
        lines.append(f"cuda binding {kind}: {'ok' if res.get('ok') else res.get('error', 'mismatch')}")
    if data.get("errors"):
        lines.append(f"sections with errors: {sorted(data['errors'])}")
    lines.append(f"total {data.get('elapsed_s')} s")
    return "\n".join(lines)


def _run(cmd: list[str]) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable: {e}"
    return done.stdout.strip() if done.returncode == 0 else f"exit {done.returncode}: {done.stderr.strip()[:200]}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Record the GPU machine's stack and PyTorch decode latency of a "
                                            "SmolLM2-135M-shaped HoE model vs the plain base (one JSON file).")
    p.add_argument("--out", required=True, type=Path, help="JSON file to write")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--quick", action="store_true", help="few steps (smoke test)")
    p.add_argument("--tiny", action="store_true", help="a tiny 2-layer model instead of the SmolLM2 shape")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "fp16"], choices=["fp32", "fp16"],
                   help="model dtypes (default fp32 fp16)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (CPU runs; default: torch's)")
    p.add_argument("--steps", type=int, default=None, help="timed decode steps per configuration (default 64)")
    p.add_argument("--warmup", type=int, default=None, help="untimed decode steps first (default 8)")
    p.add_argument("--prompt-len", type=int, default=32, help="prompt tokens before decoding (default 32)")
    p.add_argument("--budget-s", type=float, default=200.0,
                   help="skip the remaining latency configurations after this many seconds (default 200)")
    args = p.parse_args(argv)
    args.steps = args.steps or (6 if args.quick else 64)
    args.warmup = args.warmup if args.warmup is not None else (2 if args.quick else 8)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = Report(args.out)
    route = report.section("import", ensure_hoe_importable)
    report.section("system", system_info, route)
    report.section("packages", package_versions)
    gpu = report.section("gpu", gpu_info) or {}
    args.device = args.device or ("cuda" if gpu.get("cuda_available") else "cpu")
    report.data["device"] = args.device
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    report.section("onnxruntime", onnxruntime_info)
    report.section("tensorrt", tensorrt_info)
    if route is not None:
        report.section("cuda_memory", cuda_memory_section)
        report.section("latency", latency_section, args, report)
        report.section("ort_mixing", ort_mixing_section, args)
    report.data["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    report.write()
    print(summary_table(report.data))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
