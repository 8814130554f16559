"""Small helpers shared by data, conversion, training and benchmarking (no model code)."""
