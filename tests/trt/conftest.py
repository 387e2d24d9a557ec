import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def toy(tmp_path):
    """A toy exported folder (toy_export.py)."""
    import toy_export as te

    return te.make_folder(tmp_path / "export")


@pytest.fixture
def fake(monkeypatch):
    """install(version, gpu, ...) -> (fake tensorrt module, HostMemory), installed as sys.modules["tensorrt"]."""
    import fake_trt

    def install(version="10.3.0.30", gpu=None, parse_errors=None, **engine):
        memory = fake_trt.HostMemory(gpu)
        module = fake_trt.make_module(version, memory, parse_errors, **engine)
        monkeypatch.setitem(sys.modules, "tensorrt", module)
        return module, memory
    return install
