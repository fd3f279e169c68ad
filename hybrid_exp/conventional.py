"""The conventional pipeline: what training scripts usually do (per-image CPU augmentation in
DataLoader workers), for comparisons (python -m hybrid_exp.bench, data=cifar10_conventional)."""
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from hybrid_exp.dataset_files import MEAN, STD


class AugmentedImages(Dataset):
    """Per-image CPU augmentation, as torchvision's transforms do it: (3, 32, 32) float."""

    def __init__(self, images, labels, pad: int = 4):
        self.images, self.labels, self.pad = images, labels, pad  # (N, H, W, C) uint8 arrays
        self.mean = torch.tensor(MEAN).view(3, 1, 1)
        self.std = torch.tensor(STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        image = torch.from_numpy(self.images[i]).permute(2, 0, 1)  # (C, H, W) uint8
        _, h, w = image.shape
        top, left = torch.randint(0, 2 * self.pad + 1, (2,)).tolist()  # torch RNG: seeded per worker
        image = F.pad(image, (self.pad,) * 4)[:, top:top + h, left:left + w]
        if torch.rand(()) < 0.5:
            image = image.flip(2)
        return (image.float() / 255 - self.mean) / self.std, int(self.labels[i])


def conventional_loader(images, labels, batch_size: int, workers: int, pin: bool,
                        seed: int = 0) -> DataLoader:
    return DataLoader(AugmentedImages(images, labels), batch_size=batch_size, shuffle=True,
                      drop_last=True, num_workers=workers, pin_memory=pin,
                      persistent_workers=workers > 0, generator=torch.Generator().manual_seed(seed))
