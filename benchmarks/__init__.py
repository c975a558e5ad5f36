"""One-command benchmarks that print side-by-side ratios."""
