"""`hoe build-engine` (runtime/backends/trt_build.py) against the fake TensorRT: network flags, precision, profiles, the
timing cache (reused, or refused by TensorRT and then treated as absent) and engine.json written with the engine."""

from __future__ import annotations

import json
import logging

import fake_trt
import pytest
from hoe.contract import engine as tp
from hoe.contract.folder import Manifest
from hoe.core.errors import BackendError, ConfigError

SMALL = dict(max_batch=2, max_context=24, max_prefill=4)
ORIN = {"name": "Jetson AGX Orin", "compute_capability": "8.7"}
DESKTOP = {"name": "NVIDIA GeForce RTX 4090", "compute_capability": "8.9"}


def _build(folder, fake, version="10.3.0.30", gpu=None, **cfg):
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    trt, memory = fake(version, gpu=gpu)
    out = build_engine(folder, BuildConfig(limits=tp.EngineLimits(**SMALL), **cfg), gpu=memory.device_info())
    return out, trt, memory


def _complete(out, gpu):
    """engine.json describes the model.engine beside it, built for `gpu`."""
    import hashlib

    info = json.loads((out / tp.ENGINE_MANIFEST).read_text())
    digest = hashlib.sha256((out / tp.ENGINE_FILE).read_bytes()).hexdigest()
    return info["sha256"][tp.ENGINE_FILE] == digest and info["gpu"] == gpu


def _cache(gpu, entries):
    return fake_trt.CACHE_MAGIC + f"{gpu['name']}@{gpu['compute_capability']}|".encode() + b"+" * entries


def test_build_writes_engine_manifest_and_timing_cache(toy, fake):
    out, trt, memory = _build(toy, fake, gpu=ORIN)
    info = json.loads((out / tp.ENGINE_MANIFEST).read_text())
    assert _complete(out, ORIN) and (out / tp.TIMING_CACHE).read_bytes() == _cache(ORIN, 1)
    assert info["tensorrt"] == "10.3.0.30" and info["gpu"] == memory.device_info()
    assert info["precision"] == "fp32" and info["strongly_typed"] is True
    assert [info["profiles"][p]["index"] for p in tp.PHASES] == [0, 1]
    assert info["profiles"]["decode"]["shapes"]["input_ids"] == {"min": [1, 1], "opt": [1, 1], "max": [2, 1]}
    assert info["source_sha256"]["model.onnx"] == Manifest.load(toy).data["sha256"]["model.onnx"]
    assert ("create_network", 1 << 1) in trt.calls  # STRONGLY_TYPED is 1 in TensorRT 10 (NvInfer.h v10.3.0)
    _build(toy, fake, gpu=ORIN)  # a second build on the same device starts from the saved timing cache
    assert (out / tp.TIMING_CACHE).read_bytes() == _cache(ORIN, 2)


def test_strongly_typed_flag_on_trt11(toy, fake):
    _, trt, _ = _build(toy, fake, version="11.1.0.1")
    assert ("create_network", 1 << 0) in trt.calls  # STRONGLY_TYPED is 0 in TensorRT 11 (deprecated, ignored)


def test_timing_cache_from_another_gpu_is_not_used_and_the_build_completes(toy, fake, caplog):
    """The Jetson workflow: the exported folder (with the desktop's trt/timing.cache) is copied to the device.
    TensorRT refuses the foreign cache (set_timing_cache -> False); the build must still write a complete engine
    and replace the cache with this device's."""
    out, _, _ = _build(toy, fake, gpu=DESKTOP)
    assert (out / tp.TIMING_CACHE).read_bytes() == _cache(DESKTOP, 1)
    with caplog.at_level(logging.WARNING):
        _, trt, _ = _build(toy, fake, gpu=ORIN)
    assert _complete(out, ORIN)
    assert (out / tp.TIMING_CACHE).read_bytes() == _cache(ORIN, 1)  # started empty, not from the desktop's
    assert "other properties" in caplog.text and any("does not match" in e for e in trt.errors)
    _build(toy, fake, gpu=ORIN)  # and every later build on the device reuses its own cache
    assert (out / tp.TIMING_CACHE).read_bytes() == _cache(ORIN, 2)


@pytest.mark.parametrize("content", [b"not a timing cache", b"\x00" * 64], ids=["text", "zeros"])
def test_unreadable_timing_cache_is_treated_as_absent(toy, fake, caplog, content):
    (toy / tp.ENGINE_DIR).mkdir()
    (toy / tp.ENGINE_DIR / tp.TIMING_CACHE).write_bytes(content)
    with caplog.at_level(logging.WARNING):
        out, _, _ = _build(toy, fake, gpu=ORIN)
    assert _complete(out, ORIN) and (out / tp.TIMING_CACHE).read_bytes() == _cache(ORIN, 1)
    assert "cannot read" in caplog.text


def test_no_engine_is_left_without_its_engine_json(toy, fake, monkeypatch):
    """A build that fails while publishing leaves neither a new engine nor an old engine.json describing it."""
    out, _, _ = _build(toy, fake, gpu=ORIN)

    def fail(folder, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tp, "save_engine_manifest", fail)
    with pytest.raises(OSError, match="No space"):
        _build(toy, fake, gpu=ORIN)
    assert not (out / tp.ENGINE_FILE).exists() and not (out / tp.ENGINE_MANIFEST).exists()


def test_missing_timing_cache_never_fails_a_build(toy, fake, monkeypatch, caplog):
    """get_timing_cache may be None (nothing attached): the engine is complete, no cache file is written."""
    from hoe.runtime.backends import trt_build

    monkeypatch.setattr(trt_build, "attach_timing_cache", lambda config, path: False)
    with caplog.at_level(logging.WARNING):
        out, _, _ = _build(toy, fake, gpu=ORIN)
    assert _complete(out, ORIN) and not (out / tp.TIMING_CACHE).exists()
    assert "no timing cache" in caplog.text


def test_parser_errors_are_all_reported(toy, fake):
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    fake(parse_errors=["Unsupported op Foo", "bad attribute on Bar"])
    with pytest.raises(BackendError, match="2 errors") as e:
        build_engine(toy, BuildConfig(limits=tp.EngineLimits(**SMALL)), gpu=ORIN)
    assert "Unsupported op Foo" in str(e.value) and "bad attribute on Bar" in str(e.value)


def test_fp16_flag_only_on_trt10(toy, fake):
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    cfg = BuildConfig(limits=tp.EngineLimits(**SMALL), fp16=True)
    trt, _ = fake("10.3.0.30")
    build_engine(toy, cfg, gpu=ORIN)
    assert ("build_serialized_network", [0]) in trt.calls and ("create_network", 0) in trt.calls
    fake("11.4.1.0")
    with pytest.raises(ConfigError, match="hoe export --dtype fp16"):
        build_engine(toy, cfg, gpu=ORIN)


def test_inputs_the_parser_made_shape_tensors_are_refused_before_building(toy, fake):
    from hoe.runtime.backends.trt_build import BuildConfig, build_engine

    trt, _ = fake(host_tensors=("position_ids",))
    with pytest.raises(BackendError, match=r"\['position_ids'\] shape tensors"):
        build_engine(toy, BuildConfig(limits=tp.EngineLimits(**SMALL)), gpu=ORIN)
    assert not any(c[0] == "build_serialized_network" for c in trt.calls)
