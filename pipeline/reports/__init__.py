"""Run reports: the funnel, distributions and the sections stages contribute, rendered as HTML, Markdown and JSON."""
