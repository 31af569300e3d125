"""Retrieval evaluation, as torchmetrics splits it: ``functional`` (the math on embeddings, pure functions),
``collector`` (the thin ``Metric`` that holds a stream's embeddings across batches and ranks) and ``keys`` (how a
metric is named in the logs, spelled and read in one place). Import from the modules: ``keys`` needs no torch.
"""
