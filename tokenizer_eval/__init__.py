"""Tokenizer quality on a Gristmill dataset: corpus metrics per language and domain, vocabulary metrics, a comparison report.

`gristmill tokenizer eval` (pipeline/cli/tokenizer.py) drives it; docs/TOKENIZER_EVAL.md defines every metric.
"""
