"""``AvalancheBatchRenorm2D``: Avalanche's BatchRenorm2D as its chain of eager ops (the BRN oracle and peer)."""

from __future__ import annotations

import torch
from torch import nn


class AvalancheBatchRenorm2D(nn.Module):
    """Avalanche's BatchRenorm2D forward (§5.2) written out in eager ops, with the fixed initialisation
    (mean 0, std 1) and its running statistics as plain attributes."""

    def __init__(self, C, eps=1e-5, momentum=0.01, step=1e-4, r_max=1.0, d_max=0.0, max_r_max=3.0, max_d_max=5.0):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(1, C, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, C, 1, 1))
        self.running_avg_mean = torch.zeros(1, C, 1, 1)
        self.running_avg_std = torch.ones(1, C, 1, 1)
        self.eps, self.momentum, self.step = eps, momentum, step
        self.r_max, self.d_max, self.max_r_max, self.max_d_max = r_max, d_max, max_r_max, max_d_max

    def forward(self, x):
        self.running_avg_mean = self.running_avg_mean.to(x.device)
        self.running_avg_std = self.running_avg_std.to(x.device)
        mean = x.mean((0, 2, 3), keepdim=True)
        std = torch.sqrt(x.var((0, 2, 3), unbiased=False, keepdim=True) + self.eps)
        if not self.training:
            return self.gamma * (x - self.running_avg_mean) / self.running_avg_std + self.beta
        r = (std.detach() / self.running_avg_std).clamp(1 / self.r_max, self.r_max)
        d = ((mean.detach() - self.running_avg_mean) / self.running_avg_std).clamp(-self.d_max, self.d_max)
        y = self.gamma * ((x - mean) * r / std + d) + self.beta
        if self.r_max < self.max_r_max:
            self.r_max += self.step * x.shape[0]
        if self.d_max < self.max_d_max:
            self.d_max += self.step * x.shape[0]
        self.running_avg_mean = self.running_avg_mean + self.momentum * (mean.detach() - self.running_avg_mean)
        self.running_avg_std = self.running_avg_std + self.momentum * (std.detach() - self.running_avg_std)
        return y
