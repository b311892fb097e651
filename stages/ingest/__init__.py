"""Source stages: WARC/WET ingest with HTML extraction, and JSONL/Parquet text."""
