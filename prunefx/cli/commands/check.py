"""prunefx check FILE.onnx --target trt10|trt11|orin|ort [--json]: engine readiness without a GPU.

One line per finding (severity, rule, node name, operator, what and why), then a summary line; `--json`
prints the same as one JSON object. Exit status 1 when a finding is an error, 0 otherwise (2 for a bad file
or option, as every command). The rules and the operator table with its sources: runtime/check/readiness.py,
runtime/check/rules.py, runtime/check/targets.py.
"""

from __future__ import annotations

import json

from prunefx.runtime.check.readiness import check_file


def run(args) -> int:
    readiness = check_file(args.file, args.target)
    if args.json:
        print(json.dumps(readiness.as_dict(), indent=2))
    else:
        for finding in readiness.findings:
            print(finding.line())
        print(f"operator support: {readiness.source}")
        print(readiness.summary())  # last: the count of findings, what a script reads with `tail -1`
    return 0 if readiness.ok else 1
