"""Prior correction: undoing part of the class weighting's bias towards rare classes, inside the network.

Class-weighted cross-entropy (weights ``w``) trains the logits of class ``c`` to exceed the unweighted
optimum by about ``log w_c``: rare classes win pixels they should not, and IoU pays for every false
positive (the shipped 6000-step ENet found 96% of background but gave 0.8% of it to pedestrians,
more than all the true pedestrian pixels). Subtracting ``alpha * log w`` from the logits moves the
decision towards the unweighted one; ``alpha`` is picked on the validation frame sets from a short
grid (one number, so a small validation set does not overfit it) and folded into the classifier's
bias, so every backend and the ONNX export carry it at no cost.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from bev_service.model.data import FrameSource
from bev_service.model.enet import ENet, network_input
from bev_service.model.evaluate import Confusion

log = logging.getLogger(__name__)

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)


@torch.inference_mode()
def alpha_scores(
    model: ENet, weights: torch.Tensor, source: FrameSource, alphas: tuple[float, ...] = ALPHAS
) -> dict[float, float]:
    """Validation mIoU for each ``alpha`` of the logit offset ``-alpha * log(weights)``."""
    model = model.eval()
    device = next(model.parameters()).device
    log_w = torch.log(weights.to(device)).reshape(1, -1, 1, 1)  # (1, C, 1, 1)
    confusions = {a: Confusion(model.num_classes) for a in alphas}
    for i in range(len(source)):
        frame_set = source[i]
        logits = model(network_input(torch.from_numpy(frame_set.images).to(device))).float()  # (N, C, H, W)
        for a, conf in confusions.items():
            conf.update((logits - a * log_w).argmax(dim=1).to(torch.uint8).cpu().numpy(), frame_set.labels)
    return {a: conf.miou() for a, conf in confusions.items()}


@torch.no_grad()
def correct_prior(
    model: ENet, weights: torch.Tensor, source: FrameSource, alphas: tuple[float, ...] = ALPHAS
) -> dict[str, object]:
    """Fold the best ``-alpha * log(weights)`` into ``model.head``'s bias (in place); returns what was chosen."""
    if model.head.bias is None:
        raise ValueError("the classifier has no bias to fold the prior correction into")
    if weights.shape != (model.num_classes,) or not bool((weights > 0).all()):
        raise ValueError(f"expected {model.num_classes} positive class weights, got {tuple(weights.tolist())}")
    scores = alpha_scores(model, weights, source, alphas)
    best = max(scores, key=lambda a: (np.nan_to_num(scores[a], nan=-1.0), -a))
    model.head.bias -= best * torch.log(weights.to(model.head.bias.device))
    log.info("prior correction: alpha %.2f (validation mIoU %s)", best, {a: round(v, 4) for a, v in scores.items()})
    return {"alpha": best, "val_miou_by_alpha": {str(a): round(float(v), 4) for a, v in scores.items()}}
