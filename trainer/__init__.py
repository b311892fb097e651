"""The bundled PyTorch GPT for short proxy runs over Gristmill's tokenized shards.

`model.py` is the whole model, `data.py` the batching (Dataset Decomposition, baselines,
mixtures), `train.py` the loop, `proxy.py` the dataset comparison behind `gristmill proxy`.
"""
