"""2:4 (N:M) sparsity: masks and the Hessians that choose them."""
