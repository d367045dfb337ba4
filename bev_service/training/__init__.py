"""Making the network: synthetic-data feeding, training, prior correction, pruning, evaluation, export, int8
quantization and plots. Nothing on the request path imports this package; the modules import torch themselves.
"""
