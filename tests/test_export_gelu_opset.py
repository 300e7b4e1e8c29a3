"""prunefx's ONNX files are opset 20 by default, the first opset with a Gelu operator: GELU is written as one node,
which ONNX Runtime runs as one kernel (below 20 it is five that its CPU provider leaves unfused), computing what
torch computes."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from prunefx.graph import capture
from prunefx.runtime import export_onnx


@pytest.mark.slow
def test_the_default_export_writes_gelu_as_one_operator_that_onnx_runtime_runs(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8)).eval()
    x = torch.randn(2, 16)
    path = export_onnx(capture(model, x).eval(), tmp_path / "gelu.onnx").path
    written = onnx.load(path)
    assert [entry.version for entry in written.opset_import if entry.domain in ("", "ai.onnx")] == [20]
    ops = [node.op_type for node in written.graph.node]
    assert ops.count("Gelu") == 1 and "Erf" not in ops
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    assert "Gelu" in [node.op_type for node in onnx.load(options.optimized_model_filepath).graph.node]
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)
