"""The benchmarks of bev-service, one module each (warp, synth, model, pipeline, service, load).

Run one from the repository root as ``.venv/bin/python -m bench.<name> [--repeat N] [--quick]``
(``make bench`` runs them all). Each prints its figures, among them the ratio against its baseline
measured in the same run, and ends with one JSON line (``{"bench": "<name>", ...}``, see bench/common.py).
"""
