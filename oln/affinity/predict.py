"""Affinity inference: images in [0, 1] -> per-pixel affinity probabilities."""

from __future__ import annotations

import torch
from torch import nn

from oln.affinity.train import PAD_MULTIPLE, pad_batch


@torch.no_grad()
def predict_affinity(
    model: nn.Module,
    images: list[torch.Tensor],
    meta: dict,
    device: str | torch.device,
    batch_size: int = 1,
) -> list[torch.Tensor]:
    """Sigmoid affinity of each image at its own size.

    Images are padded to a multiple of 32 (bottom/right), run in batches of
    `batch_size` (bf16 autocast on CUDA), and the prediction is cropped back.

    Args:
        model: a network from `load_pa_model` (normalises its input itself).
        images: float (3, H, W) tensors in [0, 1].
        meta: the model's meta (kept for the interface; channels follow `meta["out_channels"]`).
        device: where to run.
        batch_size: images per forward pass.
    Returns:
        float32 CPU tensors (C, H, W) in [0, 1], C = meta["out_channels"].
    """
    device = torch.device(device)
    model.eval()
    outputs: list[torch.Tensor] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        x = pad_batch(chunk, PAD_MULTIPLE).to(device)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            probs = torch.sigmoid(model(x).float())
        for image, prob in zip(chunk, probs):
            h, w = image.shape[-2:]
            outputs.append(prob[:, :h, :w].float().cpu())
    return outputs
