"""The engine: datasets, the stage API and registry, graphs, shard tasks, the runner, executors and the file helpers every layer above shares."""
