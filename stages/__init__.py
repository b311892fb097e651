"""Gristmill's built-in stages, grouped by step: ingest, filters, dedup, quality, rewrite, tokens.

Stages are found through the `gristmill.stages` entry points (see pyproject.toml), the same way as
third-party ones; importing this package imports none of them.
"""
