"""A Hugging Face model's outputs are an `ImageClassifierOutput`, a class of the library: a Program keeps
them in builtin containers, so that its `.pt2` reads back in a process that never imports transformers,
and a file that names such a class is refused in one line instead of importing anything."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from prunefx.graph import capture
from prunefx.passes.remove_channels import remove_channels

transformers = pytest.importorskip("transformers")

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# Runs `prunefx inspect` on each file given, printing each exit code and its error line, then whether
# transformers got imported along the way.
_INSPECT = """
import sys
from prunefx.cli import main
for path in sys.argv[1:]:
    code = main(['inspect', path])
    sys.stdout.flush()
    print('EXIT', code, flush=True)
print('TRANSFORMERS IMPORTED' if 'transformers' in sys.modules else 'transformers not imported')
"""


def _tiny_vit():
    config = transformers.ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=128, num_labels=5)
    torch.manual_seed(0)
    return transformers.ViTForImageClassification(config).eval()


def test_pruned_hf_program_reads_back_without_transformers_and_a_foreign_class_is_refused(tmp_path):
    model, x = _tiny_vit(), torch.randn(1, 3, 32, 32)
    program = capture(model, x).eval()
    assert isinstance(program(x), dict) and set(program(x)) == {"logits"}  # builtin, keys kept
    remove_channels(program, config={"macs": 0.5, "ranking": "local", "round_to": 4, "strict": False})
    assert program.state_dict()["vit.layers.0.mlp.fc1.weight"].shape[0] < 128  # really pruned
    program.save(tmp_path / "model.pt2")
    # what torch.export.save writes for the model itself: its output tree names the library's class
    torch.export.save(torch.export.export(model, (x,), strict=False), tmp_path / "raw.pt2")

    done = subprocess.run([sys.executable, "-c", _INSPECT, str(tmp_path / "model.pt2"), str(tmp_path / "raw.pt2")],
                          capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", "PATH": ""})
    exits = [line for line in done.stdout.splitlines() if line.startswith("EXIT")]
    assert exits == ["EXIT 0", "EXIT 2"], done.stdout + done.stderr
    assert "transformers not imported" in done.stdout
    refusal = [line for line in done.stderr.splitlines() if "raw.pt2" in line]
    assert len(refusal) == 1 and "ImageClassifierOutput" in refusal[0] and "refused" in refusal[0]
