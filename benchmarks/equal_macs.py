"""When two choices of channels count as pruned to equal MACs: within remove_channels' target tolerance of each
other. A latency row of gpu_speedup compares the latency choice with the MACs choice only at equal MACs; one
further apart is no comparison (the README says so, and the next GPU check measures it again)."""

TOLERANCE = 0.03  # remove_channels' target tolerance, a fraction of the reference's MACs


def at_equal_macs(kept: float, reference: float) -> bool:
    return abs(kept - reference) <= TOLERANCE * reference
