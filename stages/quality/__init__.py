"""Quality stages: fastText scoring, filtering and domain labels, with the model reader they share."""
