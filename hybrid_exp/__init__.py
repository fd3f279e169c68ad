"""hybrid-exp: variant x seed experiment grids for Ghosh (2017), arXiv 1701.04489."""
