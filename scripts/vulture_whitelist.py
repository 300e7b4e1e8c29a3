"""Names vulture cannot see used, each called by a framework rather than by prunefx (`make lint`).

Only genuine entry points belong here: a method a library calls by name, an attribute a library reads,
a field read through dataclasses.asdict / a config mapping, a function registered by a decorator.
"""

from vulture.whitelist_utils import Whitelist

framework = Whitelist()

ENTRY_POINTS = [
    framework.__class__,            # a module re-classed in place keeps its identity (prunefx/interop/ultralytics_bridge.py)
    framework.__call__,             # a pass (contract.DeclaredPass, Pipeline, the Pass protocol) is called
    framework.__getattr__,          # module-level lazy imports (prunefx/__init__.py), PEP 562
    framework.__dir__,              # the same, for dir(prunefx)
    framework.find_classes,         # torchvision DatasetFolder overrides (prunefx/data/splits.py)
    framework.make_dataset,
    framework.allow_empty,          # ... and the arguments torchvision passes to them
    framework.extensions,
    framework.is_valid_file,
    framework.fuse,                 # Ultralytics calls model.fuse() before export (prunefx/detectors.py)
    framework.create_module,        # importlib's Loader protocol (runtime/_moved.py: old module paths)
    framework.get_next,             # onnxruntime CalibrationDataReader (runtime/onnx/quantize_static.py)
    framework.report_layer_time,    # tensorrt IProfiler (runtime/tensorrt/layer_profile.py)
    framework.log_severity_level,   # onnxruntime SessionOptions, read by onnxruntime
    framework.inter_op_num_threads,
    framework.execution_mode,
    framework.graph_optimization_level,
    framework.profiling_verbosity,  # tensorrt IBuilderConfig, read by tensorrt
    framework._qkv_same_embed_dim,  # torch's TransformerEncoderLayer reads it (prunefx/interop/pruned_attention.py)
    framework._prunefx_scale_folded,  # read through vars() (prunefx/interop/attention_scale.py)
    framework.use_nested_tensor,    # torch's TransformerEncoder reads it (prunefx/interop/pruned_attention.py)
    framework._out_spec,            # torch.fx GraphModule's output spec (graph/output_tree.py)
    framework.args_iter,            # torch.fx Interpreter reads it for placeholders (graph/batch_walk.py)
    framework.writable,             # io.RawIOBase protocol, asked by torch's zip writer (graph/zip_target.py)
    framework.seekable,
    framework._per_channel_rule,    # registered by @channel_rule (graph/int8/quantization.py)
    framework.strict,               # config fields, read through the config mapping (as_dict)
    framework.min_speedup,
    framework.sequential,
    framework.normalized_shape,     # nn.Module attributes torch reads (prunefx/interop/module_resizers.py)
    framework.num_channels,
    framework.embedding_dim,
    framework.num_embeddings,
    framework.kdim,
    framework.vdim,
    framework.input_size,
    framework.extra_repr,           # nn.Module's repr hook (prunefx/interop/subgraph_module.py)
    framework.raw_data,             # onnx TensorProto field, read by onnx (runtime/onnx/external.py)
    framework.reducer_override,     # pickle.Pickler's hook, called by pickle (prunefx/interop/module_file.py)
]
