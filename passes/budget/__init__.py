"""The latency-budget search shared by prune_to_budget, depth_to_budget and choose_for_budget: the measuring protocol, the acceptance rule, candidate generation and the one-shot damage proxy."""
