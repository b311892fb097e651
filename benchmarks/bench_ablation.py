"""What `gristmill ablate` adds to its proxy runs: the whole ablation against the same training runs done by hand.

Contender `ablate` runs `run_ablation` from a fresh output directory (recipe already run, so both sides start from
the same datasets): held-out slice, variant graph, exclusion, tokenizer training, tokenize, decompose, export, the
proxy runs, the analysis. Contender `training` trains exactly the same runs (same TrainConfigs, same exports)
with `train()` in a loop. Rounds alternate who goes first; the summary is the median per-round ratio, whose excess
over 1 is the orchestration's share of the summed training time. Each ablation's own phase timings give the
same share measured inside one process (everything but the training phase, over the training phase).

    .venv/bin/python benchmarks/bench_ablation.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from rounds import run_rounds


def write_corpus(directory: Path, seed: int = 0) -> Path:
    """Real English (the standard library's pydoc topics) as documents of ~300 words, a tenth duplicated and some
    stubs, as JSONL for read_text."""
    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    documents = [" ".join(words[start:start + 300]) for start in range(0, len(words), 300)]
    documents += [" ".join(words[start:start + 20]) for start in range(0, len(words), 6000)]  # stubs
    rng = random.Random(seed)
    documents += rng.sample(documents, len(documents) // 10)  # exact duplicates
    rng.shuffle(documents)
    path = directory / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": f"doc-{index}", "text": text}) + "\n"
                            for index, text in enumerate(documents)))
    return path


def write_config(directory: Path, corpus: Path) -> Path:
    (directory / "recipe.yaml").write_text(f"""name: bench
stages:
  read: {{stage: read_text, params: {{paths: ['{corpus}']}}}}
  dedup: {{stage: exact_dedup, input: read}}
  long_enough: {{stage: length_filter, input: dedup, params: {{min_words: 50}}}}
""")
    path = directory / "ablation.yaml"
    path.write_text("""name: bench
recipe: {graph: recipe.yaml, output: recipe}
tokenizer: {train: {vocab_size: 2048}}
heldout: {slice: {fraction: 0.1, max_documents: 100}}
proxy:
  tokens: 65536
  seeds: [0, 1]
  seq_len: 128
  tokens_per_step: 4096
  training: {learning_rate: 0.003, warmup_steps: 4}
variants:
  raw: true
  cumulative: [dedup, long_enough]
  leave_one_out: [dedup]
""")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    arguments = parser.parse_args()

    import torch

    from gristmill.pipeline.engine.executors import InProcessExecutor
    from gristmill.pipeline.engine.graph import build_graph
    from gristmill.pipeline.engine.runner import run_graph
    from gristmill.trainer.ablation import RESULTS, run_ablation
    from gristmill.trainer.ablation_config import load_ablation
    from gristmill.trainer.train import train

    if arguments.threads:
        torch.set_num_threads(arguments.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-ablation-"))
    config_path = write_config(work, write_corpus(work))
    config, recipe = load_ablation(config_path, work / "first")
    quiet = __import__("rich.console", fromlist=["Console"]).Console(file=open("/dev/null", "w"))
    run_graph(build_graph(recipe.spec, recipe.where, recipe.output, recipe.config_dir), InProcessExecutor(),
              console=quiet)
    # One ablation first, outside the timer, to learn the runs' configs (the exports they read are its own).
    run_ablation(config, recipe, work / "first", console=quiet)
    trainings = [json.loads(path.read_text())["config"] for path in sorted((work / "first" / "runs").glob("*/seed-*/metrics.json"))]
    counter = iter(range(10**6))

    phases = []

    def ablate() -> None:
        output = work / f"ablate-{next(counter)}"
        phases.append(run_ablation(config, recipe, output, console=quiet)["seconds"])

    def training_only() -> None:
        from gristmill.trainer.config import TrainConfig

        output = work / f"train-{next(counter)}"
        for settings in trainings:
            train(TrainConfig(**settings | {"output": str(output / Path(settings["output"]).parent.name
                                                          / Path(settings["output"]).name)}))

    results = run_rounds({"ablate": ablate, "training": training_only}, arguments.rounds)
    ratios = [round_["ablate"].wall / round_["training"].wall for round_ in results]
    summary = {
        "runs_per_round": len(trainings), "tokens_per_run": json.loads((work / "first" / RESULTS).read_text())["tokens_per_run"],
        "ablate_seconds": statistics.median(round_["ablate"].wall for round_ in results),
        "training_seconds": statistics.median(round_["training"].wall for round_ in results),
        "ratio_median": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
        "overhead_percent_median": 100 * (statistics.median(ratios) - 1),
        # Inside each ablation: everything but the training phase, over the training phase. Load from other jobs
        # stretches both alike, so this share holds on a busy machine where the round ratio does not.
        "orchestration_percent_of_training": [round(100 * (item["total"] - item["training"]) / item["training"], 2)
                                              for item in phases],
        "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work)
    sys.exit(0)


if __name__ == "__main__":
    main()
