"""The fp64 rule of `hoe bench parity`: a case outside the fp32 tolerance is judged against float64, and passes
only when the backend is within `fp64_factor` times torch fp32's own distance to float64."""

import numpy as np
import pytest
from hoe.bench import parity


class _Stub:
    """A runner whose forward returns fixed logits; backend.deactivate is a no-op."""

    def __init__(self, logits):
        self.logits = logits
        self.backend, self.model = self, None

    def forward(self, case):
        return self.logits

    def deactivate(self):
        pass


def _judge(monkeypatch, ort, ref32, exact, factor=4.0):
    case = parity.Case(1, 1, 0, [[1.0]], np.zeros((1, 1), np.int64), np.ones((1, 1), np.int64))
    runners = iter([_Stub(ref32), _Stub(exact)])
    monkeypatch.setattr(parity, "reference_runner", lambda *a: next(runners))
    monkeypatch.setattr(parity, "open_runner", lambda *a: _Stub(ort))
    monkeypatch.setattr("hoe.export.fp64_reference.exact_float64", lambda model: None)
    result = {"backends": {"ort:cpu": {"cases": [{"passed": False}]}}}
    parity._judge_by_fp64(parity.ParityConfig(fp64_factor=factor), None, [case], result, None, None)
    return result["backends"]["ort:cpu"]["cases"][0]


def test_within_the_factor_of_torch_fp32s_own_error_passes(monkeypatch):
    exact = np.full((1, 1, 4), 10.0)
    c = _judge(monkeypatch, exact + 3e-3, exact - 1e-3, exact)
    assert c["passed"]
    assert c["fp64"]["backend_vs_fp64"] == pytest.approx(3e-3)
    assert c["fp64"]["torch_fp32_vs_fp64"] == pytest.approx(1e-3)


def test_beyond_the_factor_fails(monkeypatch):
    exact = np.full((1, 1, 4), 10.0)
    c = _judge(monkeypatch, exact + 5e-3, exact - 1e-3, exact)
    assert not c["passed"] and c["fp64"]["factor"] == 4.0


def test_non_finite_never_passes(monkeypatch):
    exact = np.full((1, 1, 4), 10.0)
    c = _judge(monkeypatch, np.full((1, 1, 4), np.nan), exact - 1e-3, exact)
    assert not c["passed"]
