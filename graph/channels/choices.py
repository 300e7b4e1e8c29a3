"""The names channel pruning's options choose among: importance criteria, rankings, targets and the obs
elimination's stopping rule. Torch-free, so that the command line makes its flags' choices of them without
importing the modules that compute with them (importance.py, selection.py, obs_elimination.py)."""

CRITERIA = ("l1", "l2", "bn", "taylor", "fisher", "obs", "random")
GRADIENT_CRITERIA = ("taylor", "fisher")
DATA_CRITERIA = (*GRADIENT_CRITERIA, "obs")  # the criteria that read calibration batches
RANKINGS = ("global", "local", "uniform")
TARGET_KINDS = ("macs", "params", "channels", "layer_time")
STEPS = ("exact", "fast")  # remove_channels' obs_steps: where the elimination stops (obs_elimination.eliminate)
