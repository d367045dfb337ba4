"""The runtime: frames in, grid out. Resize, segmenter backends and weight loading, the int8 choice, the pipeline.

Only ``torch_backend``, ``enet`` and ``weights`` import torch; serving on ONNX Runtime runs without it.
"""
