"""ONNX Runtime's quantize_static on an FP32 file: the peer in benchmarks, and INT8 TensorRT engines from
calibration data when the file has no Q/DQ yet (runtime/tensorrt/engine.py)."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import onnx
import torch

from prunefx.graph.whole_files import file_path, replaced_whole
from prunefx.runtime.onnx.external import check_external_data, external_data_names


def quantize_static_file(source: str | os.PathLike, target: str | os.PathLike,
                         batches: Sequence[Sequence[torch.Tensor]], *, activations: str = "u8",
                         method: str = "minmax", reduce_range: bool = False, quantize_bias: bool = True) -> Path:
    """ONNX Runtime's quantize_static on the FP32 file `source`: QDQ format, per-channel symmetric INT8
    weights (7-bit with `reduce_range`, its option for CPUs without VNNI), activations U8 asymmetric (its
    default) or S8 symmetric (TensorRT's form). `quantize_bias=False` keeps biases float, as TensorRT reads them:
    its parser takes no INT32 DequantizeLinear, which ONNX Runtime's default puts on every bias."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_quantize_static

    structure = onnx.load(str(source), load_external_data=False)
    names = [value.name for value in structure.graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{name: t.detach().cpu().numpy() for name, t in zip(names, batch)} for batch in batches])

        def get_next(self):
            return next(self.items, None)

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    symmetric = activations == "s8"
    target = file_path(target)
    with replaced_whole(target) as partial, _seen_from_a_private_folder(Path(source), structure, partial) as private:
        ort_quantize_static(str(private), str(partial), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=methods[method], reduce_range=reduce_range,
                            extra_options={"ActivationSymmetric": symmetric, "WeightSymmetric": True,
                                           "QuantizeBias": quantize_bias})
    return target


@contextlib.contextmanager
def _seen_from_a_private_folder(source: Path, structure: onnx.ModelProto, partial: Path) -> Iterator[Path]:
    """`source`, and the side files its tensors name, in a temporary folder of their own beside the output being
    written (`partial`: room for the output is room for them). ONNX Runtime writes its shape-inferred copy beside
    the model it is given, as `NAME-inferred.onnx`, and deletes it after: beside the user's file that would
    replace and then remove a file of theirs of that name. The model is linked; its side files are copied (onnx
    refuses to read external data through a link or from a file with several names)."""
    check_external_data(structure, source)  # each beside it, none linking out of its folder
    with tempfile.TemporaryDirectory(prefix=f"{partial.name}.", dir=partial.parent) as folder:
        private = Path(folder) / source.name
        private.symlink_to(source.resolve())
        for name in external_data_names(structure):
            target = Path(folder) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile((source.parent / name).resolve(), target)
        yield private
