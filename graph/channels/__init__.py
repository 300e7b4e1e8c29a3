"""Channel analysis and removal: labels on every tensor dim, the rules that propagate them, coupled groups, importance, selection, removal and compensation."""
