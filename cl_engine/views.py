"""How a stored sample becomes the model's input: its evaluation view and its training view.

The learner and its memory keep samples as they arrived (uint8 images stay uint8). Each time a
sample is used, new or replayed, it is viewed afresh, batched, on the learner's device:
- evaluation: uint8 samples scaled to [0, 1] (`uint8_inputs="scale"`) and, for "imagenet", then
  normalised by ImageNet's mean and std; float samples are already model inputs and pass as they are.
  Selection metrics and held-out accuracy use this view.
- training: the evaluation view, then with `augment="crop-flip"` a random resized crop (area 8–100%
  of the sample, aspect 3/4–4/3, resized back to the sample's size, bilinear) and a horizontal flip
  with probability ½ — torchvision's RandomResizedCrop and RandomHorizontalFlip, drawn per sample
  from the learner's augmentation generator. Two uses of one memory get two different crops.

Crop and flip commute with the per-channel normalisation (a bilinear resample is an affine
combination of pixels), so the order of the two is immaterial.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .streams.images import IMAGENET_MEAN, IMAGENET_STD

AUGMENTATIONS = ("none", "crop-flip")
UINT8_INPUTS = ("scale", "imagenet")
CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
CROP_ATTEMPTS = 10  # as torchvision: the first of 10 draws that fits, else the whole sample


class InputView:
    def __init__(self, augment: str = "none", uint8_inputs: str = "scale"):
        if augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {augment!r}")
        if uint8_inputs not in UINT8_INPUTS:
            raise ValueError(f"uint8_inputs must be one of {', '.join(UINT8_INPUTS)}, got {uint8_inputs!r}")
        self.augment = augment
        self.uint8_inputs = uint8_inputs

    def evaluation(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:
            return x.float()
        x = x.float() / 255.0
        if self.uint8_inputs == "imagenet":
            shape = (1, -1) + (1,) * (x.ndim - 2)
            mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(shape)
            std = torch.tensor(IMAGENET_STD, device=x.device).view(shape)
            x = (x - mean) / std
        return x

    def training(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        x = self.evaluation(x)
        if self.augment == "crop-flip" and len(x):
            x = crop_flip(x, generator)
        return x


def crop_boxes(n: int, height: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """[n, 4] (top, left, h, w) per sample, as RandomResizedCrop.get_params draws them."""
    area = height * width
    u = torch.rand(n, CROP_ATTEMPTS, 4, generator=generator, dtype=torch.float64)
    target = area * (CROP_SCALE[0] + (CROP_SCALE[1] - CROP_SCALE[0]) * u[..., 0])
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target * aspect))
    h = torch.round(torch.sqrt(target / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = torch.where(fits.any(dim=1), fits.int().argmax(dim=1), -1)
    rows = torch.arange(n)
    pick = first.clamp(min=0)
    h, w = h[rows, pick], w[rows, pick]
    top = torch.floor(u[rows, pick, 2] * (height - h + 1))
    left = torch.floor(u[rows, pick, 3] * (width - w + 1))
    whole = first < 0
    h[whole], w[whole], top[whole], left[whole] = height, width, 0, 0
    return torch.stack([top, left, h, w], dim=1)


def crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random resized crop and a random horizontal flip of every sample of x [n, c, H, W], batched."""
    n, _, height, width = x.shape
    boxes = crop_boxes(n, height, width, generator)
    flip = torch.rand(n, generator=generator) < 0.5
    return resample(x, boxes, flip)


def resample(x: torch.Tensor, boxes: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Each sample's box (top, left, h, w) resized to the sample's size, bilinear, mirrored where `flip`."""
    n, _, height, width = x.shape
    top, left, h, w = boxes.double().unbind(1)
    # affine_grid maps output coordinates in [-1, 1] to input ones: scale to the box, shift to its centre
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = torch.where(flip, -w / width, w / width)
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
