"""Small in-memory experiences and streams with the scenario interface, for the training tests."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TensorExperienceDataset(Dataset):
    """``ds[i] -> (x, y, t)`` with ``targets`` and ``targets_task_labels``."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, t: torch.Tensor) -> None:
        self.x, self.targets, self.targets_task_labels = x, y.long(), t.long()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int):
        return self.x[i], self.targets[i], self.targets_task_labels[i]


class Stream(list):
    """A list of experiences with a ``name``."""

    def __init__(self, name: str, experiences=()) -> None:
        super().__init__(experiences)
        self.name = name


class Experience:
    def __init__(self, dataset: TensorExperienceDataset, index: int, stream: Stream, task: int = 0) -> None:
        self.dataset = dataset
        self.current_experience = index
        self.classes_in_this_experience = sorted(set(dataset.targets.tolist()))
        self.task_labels = [task]
        self.task_label = task
        self.origin_stream = stream


def make_stream(name: str, n_experiences: int = 2, n_per_exp: int = 4, n_features: int = 3,
                classes_per_exp: int = 2, seed: int = 0, task_aware: bool = False) -> Stream:
    """Class-incremental stream: experience e holds classes [e*c, (e+1)*c); features are class-shifted noise."""
    g = torch.Generator().manual_seed(seed)
    stream = Stream(name)
    for e in range(n_experiences):
        y = torch.arange(n_per_exp) % classes_per_exp + e * classes_per_exp
        x = torch.randn(n_per_exp, n_features, generator=g) + y.float().unsqueeze(1)
        t = torch.full((n_per_exp,), e if task_aware else 0)
        stream.append(Experience(TensorExperienceDataset(x, y, t), e, stream, task=e if task_aware else 0))
    return stream
