"""The bundled PyTorch GPT for short proxy runs over Gristmill's tokenized shards (to come)."""
