"""Cleaning stages: URL filters, language ID, Gopher, C4 and FineWeb heuristics, PII, length."""
