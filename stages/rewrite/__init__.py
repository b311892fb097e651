"""LLM rewriting: the stage, its prompts' checks and its backends (vLLM, OpenAI-compatible servers, transformers)."""
