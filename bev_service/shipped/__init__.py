"""What ships with the package: the default rig and the trained networks, found wherever bev_service is installed.

Every default that names a shipped file reads it from here, so ``bev`` behaves the same from any working
directory and from an installed wheel.
"""

from __future__ import annotations

from pathlib import Path

SHIPPED = Path(__file__).resolve().parent
DEFAULT_RIG = SHIPPED / "default_rig.yaml"
MODELS = SHIPPED / "models"
UNPRUNED_MODEL = MODELS / "enet.pt"
PRUNED_MODEL = MODELS / "enet-pruned.pt"  # the shipped default; the service serves its int8 graph on a CPU
