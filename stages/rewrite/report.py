"""The rewrite stage's section of the run report: outcomes by status and reason, throughput and cost by model and
prompt, and a few documents before and after; read from the columns and counters the stage writes.
"""

from __future__ import annotations

from collections import Counter, defaultdict
import pyarrow as pa
import pyarrow.compute as pc

from gristmill.pipeline.engine.stage_report import ReportedDataset, StageSection

NO_VALUE = "(none)"
OUTCOME_COLUMNS = ["rewrite_status", "rewrite_reason"]
ENGINE_COLUMNS = ["rewrite_model", "rewrite_prompt_id"]
AMOUNT_COLUMNS = ["rewrite_tokens_in", "rewrite_tokens_out", "rewrite_seconds"]
EXAMPLES = 3
EXAMPLE_CHARS = 400


def rewrite_sections(dataset: ReportedDataset, cost: dict[str, float | None]) -> list[StageSection]:
    outcomes: Counter[tuple[str, str]] = Counter()
    engines: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for batch in dataset.batches(OUTCOME_COLUMNS + ENGINE_COLUMNS + AMOUNT_COLUMNS):
        frame = pa.table({**{name: pc.fill_null(batch.column(name), NO_VALUE) for name in OUTCOME_COLUMNS + ENGINE_COLUMNS},
                          **{name: pc.fill_null(batch.column(name).cast(pa.float64()), 0.0) for name in AMOUNT_COLUMNS}})
        for row in frame.group_by(OUTCOME_COLUMNS).aggregate([("rewrite_status", "count")]).to_pylist():
            outcomes[(row["rewrite_status"], row["rewrite_reason"])] += row["rewrite_status_count"]
        aggregations = [("rewrite_model", "count")] + [(name, "sum") for name in AMOUNT_COLUMNS]
        for row in frame.group_by(ENGINE_COLUMNS).aggregate(aggregations).to_pylist():
            tally = engines[(row["rewrite_model"], row["rewrite_prompt_id"])]
            tally["documents"] += row["rewrite_model_count"]
            for name in AMOUNT_COLUMNS:
                tally[name] += row[f"{name}_sum"]
    rewritten = sum(count for (status, _), count in outcomes.items() if status == "rewritten")
    statistics = {
        "documents": sum(outcomes.values()), "rewritten": rewritten,
        "outcomes": [{"status": status, "reason": reason, "documents": count}
                     for (status, reason), count in sorted(outcomes.items(), key=lambda item: (-item[1], item[0]))],
        "engines": [{"model": model, "prompt_id": prompt, "documents": int(tally["documents"]),
                     "tokens_in": int(tally["rewrite_tokens_in"]), "tokens_out": int(tally["rewrite_tokens_out"]),
                     "seconds": round(tally["rewrite_seconds"], 3),
                     "tokens_out_per_second": (tally["rewrite_tokens_out"] / tally["rewrite_seconds"]
                                               if tally["rewrite_seconds"] else None)}
                    for (model, prompt), tally in sorted(engines.items())],
        "cost": cost,
        "examples": examples(dataset) if rewritten else [],
    }
    section = StageSection(f"Rewrite: {dataset.name}", statistics)
    section.text(f"{rewritten:,} of {statistics['documents']:,} documents rewritten; the others keep their original "
                 "text, with the reason.")
    section.table(statistics["outcomes"]).table(statistics["engines"])
    section.table([{"measure": key, "value": value} for key, value in cost.items()])
    for example in statistics["examples"]:
        section.text(f"Example {example['id']}, before: {example['before']}")
        section.text(f"After: {example['after']}")
    return [section]


def examples(dataset: ReportedDataset) -> list[dict[str, str]]:
    """The first few rewritten documents, before and after, truncated; stops reading as soon as it has them."""
    found: list[dict[str, str]] = []
    for batch in dataset.batches(["id", "original_text", "text", "rewrite_status"], batch_rows=256):
        chosen = pa.Table.from_batches([batch]).filter(pc.equal(batch.column("rewrite_status"), "rewritten"))
        for row in chosen.slice(0, EXAMPLES - len(found)).to_pylist():
            found.append({"id": str(row["id"]), "before": truncate(row["original_text"]), "after": truncate(row["text"])})
        if len(found) >= EXAMPLES:
            break
    return found


def truncate(text: str | None, limit: int = EXAMPLE_CHARS) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"

