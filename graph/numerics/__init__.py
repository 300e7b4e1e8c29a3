"""Numerical helpers of the second-order methods: in-place Cholesky inverses, symmetric products, low-rank
damped inverses. Plain tensor algebra, no graph."""
