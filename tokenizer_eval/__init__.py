"""Tokenizer quality metrics (fertility, efficiency, vocabulary categories) and comparison reports (to come)."""
