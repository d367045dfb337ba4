"""The segmentation network: ENet-family model, backends, weights, training, evaluation, pruning, export.

Importing this package imports nothing heavy; the modules import torch themselves.
"""
