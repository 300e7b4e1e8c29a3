"""Bounds on the statistics of pixels scaled to [0, 1] a model's images are normalised with: wide for any real
data set, narrow enough that normalised pixels stay finite (a std of 1e-300 would make every input infinite).
Torch-free: `--mean` and `--std` are checked against them while the command line is parsed."""

MEAN_RANGE = (-10.0, 10.0)
STD_RANGE = (1e-3, 100.0)
