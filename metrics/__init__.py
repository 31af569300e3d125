"""Retrieval evaluation, as torchmetrics splits it: ``functional`` (the math on embeddings, pure functions) and
``collector`` (the thin ``Metric`` that holds a stream's embeddings across batches and ranks).
"""
