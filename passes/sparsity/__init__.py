"""sparsify_nm's configuration, apart from the pass (passes/sparsify_nm.py) as it is long."""
