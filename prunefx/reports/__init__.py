"""What prunefx reports: budgets, compression stages, per-class metrics."""
