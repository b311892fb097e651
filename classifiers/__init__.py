"""fastText quality and domain classifiers: training, evaluation, scoring and filtering (to come)."""
