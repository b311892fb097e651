"""Gristmill core: the dataset format, the stage API, the YAML graph, executors and the CLI.

Everything a stage needs to read, write, account for and run its shards lives here.
"""
