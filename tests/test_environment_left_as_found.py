"""A calibrated, compensated prune leaves the process's environment variables as it found them: every process
prunefx or its caller starts afterwards (a measuring worker, trtexec, the user's own) inherits them. Run in a
fresh interpreter, since this suite's own imports (threadpoolctl's, say) may have set variables already."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import json, os, sys
    import torch
    from torch import nn
    # torch.export's own first call sets TORCHINDUCTOR_CACHE_DIR to the default its children would compute
    torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
    before = dict(os.environ)
    import prunefx
    from prunefx.passes.remove_channels import remove_channels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4)).eval()
    program = prunefx.capture(model, torch.randn(8, 3, 12, 12))
    calibration = [torch.randn(8, 3, 12, 12) for _ in range(2)]
    result = remove_channels(program, config={"macs": 0.5, "importance": "obs", "compensate": True,
                                              "calibration": calibration})
    after = dict(os.environ)
    print(json.dumps({
        "changed": sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key)),
        "compensated": len(result.stats["compensation"]["compensated"]),
        "threadpoolctl": "threadpoolctl" in sys.modules,
    }))
""")


def test_a_calibrated_prune_sets_no_environment_variable():
    import json

    environment = {key: value for key, value in os.environ.items() if key != "KMP_DUPLICATE_LIB_OK"}
    environment.update(OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=environment,
                          timeout=300, check=True)
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["compensated"] >= 1 and seen["threadpoolctl"]  # the path that imports threadpoolctl ran
    assert seen["changed"] == []
