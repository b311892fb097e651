"""Tokenizer quality on a Gristmill dataset: corpus metrics per language and domain, vocabulary metrics, a comparison report.

`gristmill tokenizer eval` (tokenizer_eval/cli.py) drives it; docs/TOKENIZER_EVAL.md defines every metric.
"""
