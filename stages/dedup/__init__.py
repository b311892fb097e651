"""Deduplication stages: exact and MinHash-LSH near duplicates with connected components, and decontamination."""
