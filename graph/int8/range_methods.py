"""How an activation's INT8 range is read from its calibration statistics, by name (ranges.py reads each):
torch-free, so that quantize_int8's `method` option offers them without importing torch."""

METHODS = ("max", "percentile", "mse", "entropy")
