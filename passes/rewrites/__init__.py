"""Building blocks of single passes that are not passes themselves: merge_blocks' candidates and graph rewrite, and the masks that keep sparsify_nm's zeros through training."""
