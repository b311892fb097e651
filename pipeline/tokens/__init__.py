"""Token formats: Megatron indexed datasets, their export from Dataset-Decomposition buckets, and mixture plans."""
