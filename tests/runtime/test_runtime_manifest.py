"""Manifest loading and checks (no ONNX needed): versions, sections, missing files, sha256."""

import json

import pytest
from hoe.contract.folder import Manifest
from hoe.core.config import sha256_file
from hoe.core.errors import BackendError, CheckpointError, ConfigError
from hoe.runtime import available_backends, register_backend
from hoe.runtime.backends import BackendConfig, create_backend
from runtime_helpers import fake_manifest


def _folder(tmp_path, **changes):
    data = fake_manifest(tmp_path).data
    data["files"] = {"experts": "experts.safetensors", "routers": "routers.safetensors"}
    for name in ("model.onnx", "experts.safetensors", "routers.safetensors"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    data["sha256"] = {n: sha256_file(tmp_path / n) for n in ("model.onnx", "experts.safetensors",
                                                              "routers.safetensors")}
    data.update(changes)
    (tmp_path / "hoe_config.json").write_text(json.dumps(data))
    return tmp_path


def test_loads_and_reads_fields(tmp_path):
    m = Manifest.load(_folder(tmp_path))
    assert m.context_length == 64 and m.vocab_size == 64 and m.eos_token_ids == [2] and m.pad_token_id == 0
    assert m.n_route == 3 and len(m.anchors) == 4 and m.objectives == ["obj0", "obj1", "obj2"]


def test_unknown_format_version(tmp_path):
    with pytest.raises(ConfigError, match=r"format_version 7 .*expected one of \[2\]"):
        Manifest.load(_folder(tmp_path, format_version=7))


def test_missing_section_and_missing_folder(tmp_path):
    folder = _folder(tmp_path)
    data = json.loads((folder / "hoe_config.json").read_text())
    del data["kv_cache"]
    (folder / "hoe_config.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="kv_cache"):
        Manifest.load(folder)
    with pytest.raises(CheckpointError, match="not found"):
        Manifest.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="hoe_config.json not found"):
        Manifest.load(tmp_path.parent)


def test_missing_file(tmp_path):
    folder = _folder(tmp_path)
    (folder / "routers.safetensors").unlink()
    with pytest.raises(CheckpointError, match="routers.safetensors.*missing"):
        Manifest.load(folder)


def test_sha256_mismatch_names_both_digests(tmp_path):
    folder = _folder(tmp_path)
    expected = sha256_file(folder / "experts.safetensors")
    (folder / "experts.safetensors").write_bytes(b"tampered")
    actual = sha256_file(folder / "experts.safetensors")
    with pytest.raises(CheckpointError, match=f"expected {expected}.*got {actual}"):
        Manifest.load(folder)
    Manifest.load(folder, verify=False)  # explicitly skipped


def test_unknown_backend_and_registry(tmp_path, monkeypatch):
    from hoe.runtime import backends

    monkeypatch.setattr(backends, "_REGISTRY", dict(backends._REGISTRY))  # the registration ends with the test
    m = Manifest.load(_folder(tmp_path))
    with pytest.raises(BackendError, match=r"unknown backend 'tensorrt-llm'; expected one of \["):
        create_backend(m, BackendConfig(name="tensorrt-llm"))
    from runtime_helpers import FakeBackend

    register_backend("fake-test", FakeBackend)
    assert "fake-test" in available_backends() and {"ort", "torch"} <= set(available_backends())
    with create_backend(m, BackendConfig(name="fake-test")) as backend:
        assert backend.is_active
    assert not backend.is_active
