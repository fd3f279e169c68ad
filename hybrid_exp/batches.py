"""Device batches: minibatches of device-resident uint8 images by index, cropped and flipped a
whole batch at a time on the device, from each member's seeded stream."""
import math
from typing import Callable

import torch
import torch.nn.functional as F

from hybrid_exp.dataset_files import MEAN, STD
from hybrid_exp.seeding import derive_seed


def crop_flip(x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, pad: int = 4):
    """Random crop after zero padding, and horizontal flip, for a whole batch in one gather.

    x (B, H, W, C) uint8; offsets (B, 2) in [0, 2*pad] (row, column); flips (B,) bool.
    """
    B, H, W, _ = x.shape
    x = F.pad(x, (0, 0, pad, pad, pad, pad))  # (B, H+2p, W+2p, C)
    rows = offsets[:, :1] + torch.arange(H, device=x.device)  # (B, H)
    cols = torch.arange(W, device=x.device).expand(B, W)
    cols = torch.where(flips[:, None], W - 1 - cols, cols) + offsets[:, 1:]  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    return x[batch, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)


class Batches:
    """Minibatches of device-resident images, by index, for the M members of a fused seed array
    (M = 1 for one run); an iterable for Lightning. Yields x (B, M*C, H, W) float, channels_last
    in memory, member m's images in channel block m, and labels y (B, M).

    ``indices`` (M, N): member m's images, as positions in ``images``. With ``augment_seeds`` (one
    per member) it is the training stream: member m's epoch e draws its order, crops and flips
    from ``derive_seed(augment_seeds[m], "augment", e)`` on the CPU (the same stream on any device,
    fused or not) and moves them to the device once; partial last batches are dropped. ``epoch``:
    the first epoch, counted up by each pass, or a function that tells the epoch as a pass
    starts (Lightning's current epoch: right also after a resume, which creates the loader first).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                 batch_size: int, augment_seeds: list[int] | None = None,
                 epoch: int | Callable[[], int] = 0, mean=MEAN, std=STD, pad: int = 4,
                 flip: bool = True):
        self.images, self.labels, self.indices = images, labels, indices  # (N_all, H, W, C), (M, N)
        self.batch_size, self.augment_seeds, self.epoch = batch_size, augment_seeds, epoch
        self.pad, self.flip = pad, flip  # the dataset's: its config's pad and flip
        members = len(indices)
        shape = (1, members * len(mean), 1, 1)
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).repeat(members).view(shape)
        self.std = torch.as_tensor(std, dtype=torch.float32, device=images.device).repeat(members).view(shape)

    def __len__(self) -> int:
        n = self.indices.shape[1]
        return n // self.batch_size if self.augment_seeds is not None else math.ceil(n / self.batch_size)

    def __iter__(self):
        (M, n), device = self.indices.shape, self.images.device
        train = self.augment_seeds is not None
        if train:
            epoch = self.epoch() if callable(self.epoch) else self.epoch
            draws = [self.draw(seed, epoch, n, self.pad, self.flip) for seed in self.augment_seeds]
            order, offsets, flips = (torch.stack(d).to(device) for d in zip(*draws))  # (M, n, ...)
            if not callable(self.epoch):
                self.epoch += 1
        else:
            order = torch.arange(n, device=device).expand(M, n)
        members = torch.arange(M, device=device)[:, None]
        for i in range(len(self)):
            position = order[:, i * self.batch_size:(i + 1) * self.batch_size]  # (M, B)
            idx = self.indices[members, position]  # (M, B) rows of images
            x = self.images[idx]  # (M, B, H, W, C) uint8
            if train:
                x = crop_flip(x.flatten(0, 1), offsets[members, position].flatten(0, 1),
                              flips[members, position].flatten(0, 1), self.pad).view(x.shape)
            B, H, W = x.shape[1:4]
            yield self.normalize(x.permute(1, 2, 3, 0, 4).reshape(B, H, W, -1)), self.labels[idx].T

    @staticmethod
    def draw(seed: int, epoch: int, n: int, pad: int = 4, flip: bool = True
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One member's epoch: (order (n,), crop offsets (n, 2), flips (n,)), on the CPU. The
        flips are drawn also without flipping: the stream's other draws stay the same."""
        g = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch))
        order = torch.randperm(n, generator=g)
        offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=g)
        return order, offsets, torch.randint(0, 2, (n,), generator=g).bool() & flip

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, M*C) uint8 -> (B, M*C, H, W) float, channels_last in memory."""
        return (x.permute(0, 3, 1, 2).float() / 255 - self.mean) / self.std
