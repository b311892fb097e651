"""Token stages: tokenizers, tokenization and Dataset-Decomposition buckets."""
