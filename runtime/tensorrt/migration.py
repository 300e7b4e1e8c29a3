"""What changed between TensorRT 10 and 11 for the code prunefx runs against it, as data with its sources.

tests/test_tensorrt_api.py holds runtime/tensorrt/ to these lists: a TensorRT-10-only API or trtexec option may be
used only behind the TensorRT version check. Sources:
- PYTHON_REMOVED_IN_11: NVIDIA, "Removed Python APIs and Replacements", TensorRT 11 migration guide,
  https://docs.nvidia.com/deeplearning/tensorrt/latest/api/migration/tensorrt-10x-to-11x-python-api-reference.html
  (the weak-typing builder flags, implicit INT8 calibration and quantization flags; the entries prunefx could reach),
  and Builder.platform_has_fast_fp16/int8, whose C++ counterparts (IBuilder::platformHasFastFp16/Int8) the C++
  reference of the same guide lists as removed.
- TRTEXEC_REMOVED_IN_11: "Migrating trtexec Usage from TensorRT 10.x to 11.x",
  https://docs.nvidia.com/deeplearning/tensorrt/11.0.0/api/migration/tensorrt-10x-to-11x-trtexec.html
  ("removes all precision flags (--fp16, --int8, --bf16, --fp8, --int4, --best)", "removes the --int8 and --calib
  flags"). TRTEXEC_NO_OP_IN_11: what 11.1's help marks "[Deprecated] ... a no-op": --stronglyTyped, and the flags
  of the run defaults 11 turned round (CUDA graphs on, data transfers off, spin wait, a separate profile run).
- TRTEXEC_OPTIONS: the options trtexec's help prints, read from NVIDIA/TensorRT samples/common/sampleOptions.cpp
  at the 10.3 GA release (commit 84dd6ed1) and the 11.1 OSS release (commit 82d1dca8), less, for 11, the options
  the migration guide lists as removed.
"""

from __future__ import annotations

PYTHON_REMOVED_IN_11 = frozenset({
    "BuilderFlag.FP16", "BuilderFlag.INT8", "BuilderFlag.FP8", "BuilderFlag.BF16", "BuilderFlag.INT4",
    "BuilderFlag.FP4", "BuilderFlag.OBEY_PRECISION_CONSTRAINTS", "BuilderFlag.PREFER_PRECISION_CONSTRAINTS",
    "BuilderFlag.DIRECT_IO", "IBuilderConfig.int8_calibrator", "IBuilderConfig.set_calibration_profile",
    "IBuilderConfig.get_calibration_profile", "IBuilderConfig.set_quantization_flag",
    "IBuilderConfig.get_quantization_flag", "IBuilderConfig.quantization_flags",
    "IBuilderConfig.clear_quantization_flag", "Builder.platform_has_fast_fp16", "Builder.platform_has_fast_int8",
})

TRTEXEC_REMOVED_IN_11 = frozenset({"--fp16", "--int8", "--bf16", "--fp8", "--int4", "--best", "--calib"})
TRTEXEC_NO_OP_IN_11 = frozenset({"--stronglyTyped", "--useCudaGraph", "--noDataTransfers", "--useSpinWait",
                                 "--separateProfileRun"})

_TRTEXEC_10 = """
    allocationStrategy allowGPUFallback allowWeightStreaming avgRuns avgTiming best bf16 buildDLAStandalone
    builderOptimizationLevel calib calibProfile consistency device directIO dumpLayerInfo
    dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile dumpRefit duration dynamicPlugins
    errorOnTimingCacheMiss excludeLeanRuntime exportLayerInfo exportOutput exportProfile exportTimes
    exposeDMA fp16 fp8 getPlanVersionOnly hardwareCompatibilityLevel help idleTime ignoreParsedPluginLibs
    infStreams inputIOFormats int4 int8 iterations layerDeviceTypes layerOutputTypes layerPrecision
    layerPrecisions leanDLLPath loadEngine loadInputs markDebug maxAuxStreams maxShapes maxShapesCalib
    memPoolSize minShapes minShapesCalib noBuilderCache noCompilationCache noDataTransfers noTF32 onnx
    optShapes optShapesCalib outputIOFormats percentile persistentCacheRatio pi pluginInstanceNorm plugins
    precisionConstraints preview profile profilingVerbosity refit restricted runtimePlatform safe
    saveDebugTensors saveEngine separateProfileRun serialized setPluginsToSerialize shapes skipInference
    sleepTime sparsity staticPlugins std streams stripAllWeights stripWeights stronglyTyped tacticSources
    tempdir tempfileControls threads timeDeserialize timeRefit timingCacheFile useCudaGraph useDLACore
    useManagedMemory useProfile useRuntime useSpinWait vc verbose versionCompatible warmUp
    weightStreamingBudget weightless
"""
_TRTEXEC_11 = """
    accuracyAlgorithm accuracyThreshold adjustForDLA allocationStrategy allowGPUFallback
    allowWeightStreaming asyncFileReader atol avgRuns avgTiming buildDLAStandalone builderOptimizationLevel
    consistency continue cpuOnly decomposableAttentions device directIO distributiveIndependence dryRun
    dumpKernelText dumpLayerInfo dumpOptimizationProfile dumpOutput dumpProfile dumpRawBindingsToFile
    dumpRefit duration dynamicPlugins enablePluginOverride errorOnTimingCacheMiss excludeLeanRuntime
    exportLayerInfo exportOutput exportProfile exportTimes exposeDMA getPlanVersionOnly
    hardwareCompatibilityLevel help helpBuildRoute idleTime ignoreParsedPluginLibs includeDataTransfers
    infStreams inputIOFormats int8 iterations l2LimitForTiling layerDeviceTypes leanDLLPath loadEngine
    loadInputs loadRefOutputs markDebug markUnfusedTensorsAsDebugTensors maxAuxStreams maxShapes maxTactics
    memPoolSize minShapes monitorMemory noBuilderCache noCompilationCache noCudaGraph noDataTransfers
    noSpinWait noTF32 onnx optShapes outputIOFormats percentile persistentCacheRatio pi pluginInstanceNorm
    plugins preview profile profilingVerbosity refPair refit refitFromOnnx remoteAutoTuningConfig
    reportCapabilityDLA rtol runtimePlatform safe safetyPlugins saveAllDebugTensors saveAllEngines
    saveDebugTensors saveEngine separateProfileRun serialized setBuildRoute setPluginsToSerialize shapes
    skipInference sleepTime sparsity staticPlugins std streams stripAllWeights stripWeights stronglyTyped
    tacticSources tempdir tempfileControls threads tilingOptimizationLevel timeDeserialize timeRefit
    timingCacheFile tuneBuildRouteFile tuneBuildRoutes tuningCacheFile tuningResultFile tuningSearch
    tuningTimeOut uint8AsymmetricQuantizationDLA useCudaGraph useDLACore useManagedMemory useProfile
    useRuntime useSpinWait vc verbose versionCompatible warmUp weightStreamingBudget
"""
TRTEXEC_OPTIONS = {
    10: frozenset(f"--{name}" for name in _TRTEXEC_10.split()),
    11: frozenset(f"--{name}" for name in _TRTEXEC_11.split()) - TRTEXEC_REMOVED_IN_11,
}
