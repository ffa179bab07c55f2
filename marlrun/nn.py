"""Layers with a leading weight-set dimension: N agents' networks as one module.

A layer holds ``n_sets`` independent weight sets and maps inputs [S, B, ...] to
[S, B, ...], set s using weights s, in one batched kernel (``baddbmm`` for
linear layers, and for conv layers too, through im2col). Independent agents use
one set per agent; parameter sharing is the same module with one set and the
agents folded into the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def _uniform_(t: torch.Tensor, fan_in: int) -> None:
    bound = 1.0 / math.sqrt(fan_in)  # PyTorch's default init for Linear and Conv2d
    nn.init.uniform_(t, -bound, bound)


class SetLinear(nn.Module):
    """[S, B, in] -> [S, B, out] with an independent weight matrix per set."""

    def __init__(self, n_sets: int, in_features: int, out_features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_sets, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_sets, 1, out_features))
        _uniform_(self.weight, in_features)
        _uniform_(self.bias, in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class SetConv2d(nn.Module):
    """[S, B, H, W, C] -> [S, B, H-k+1, W-k+1, C'] with independent k x k filters per set (stride 1, no padding).

    Computed as one batched matmul over the k*k shifted views stacked along the
    channels (im2col), which on a CPU is several times faster than a grouped
    convolution for the small images of grid worlds. Channels stay last.
    """

    def __init__(self, n_sets: int, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.k = kernel_size
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(n_sets, fan_in, out_channels))  # rows ordered (di, dj, c)
        self.bias = nn.Parameter(torch.empty(n_sets, 1, out_channels))
        _uniform_(self.weight, fan_in)
        _uniform_(self.bias, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s, b, h, w, _ = x.shape
        h2, w2 = h - self.k + 1, w - self.k + 1
        patches = torch.cat([x[:, :, i : i + h2, j : j + w2] for i in range(self.k) for j in range(self.k)], dim=-1)
        y = torch.baddbmm(self.bias, patches.reshape(s, b * h2 * w2, -1), self.weight)
        return y.reshape(s, b, h2, w2, -1)


class DuelingQNetwork(nn.Module):
    """Q(s, .) = V(s) + A(s, .) - mean A(s, .) on top of a conv (or plain MLP) torso, per weight set.

    Observations come as [S, B, *obs_shape]; image observations are (H, W, C) as
    PettingZoo gives them.
    """

    def __init__(self, n_sets: int, obs_shape: tuple[int, ...], n_actions: int, conv_channels: list[int], conv_kernel: int, hidden: int, head_hidden: int):
        super().__init__()
        self.image = len(obs_shape) == 3
        layers: list[nn.Module] = []
        if self.image:
            h, w, c = obs_shape
            for width in conv_channels:
                layers += [SetConv2d(n_sets, c, width, conv_kernel), nn.ReLU()]
                c, h, w = width, h - conv_kernel + 1, w - conv_kernel + 1
            flat = c * h * w
        else:
            flat = math.prod(obs_shape)
        self.convs = nn.Sequential(*layers)
        self.torso = nn.Sequential(SetLinear(n_sets, flat, hidden), nn.ReLU())
        self.value = nn.Sequential(SetLinear(n_sets, hidden, head_hidden), nn.ReLU(), SetLinear(n_sets, head_hidden, 1))
        self.advantage = nn.Sequential(SetLinear(n_sets, hidden, head_hidden), nn.ReLU(), SetLinear(n_sets, head_hidden, n_actions))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        x = obs.float()
        if self.image:
            x = self.convs(x)
        z = self.torso(x.flatten(2))
        advantage = self.advantage(z)
        return self.value(z) + advantage - advantage.mean(-1, keepdim=True)


def clip_grad_norm_per_set(parameters, max_norm: float) -> torch.Tensor:
    """Clip each weight set's gradient to ``max_norm`` on its own (the usual clip, applied per agent).

    Every parameter's first dimension is the set; returns the norms before clipping, [S].
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads]), dim=0)
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *([1] * (g.dim() - 1))))
    return norms


class SetMLP(nn.Sequential):
    """[S, B, in] -> [S, B, out]: ``len(hidden)`` ReLU layers, then a linear output, per weight set."""

    def __init__(self, n_sets: int, in_features: int, hidden: list[int], out_features: int):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [SetLinear(n_sets, in_features, width), nn.ReLU()]
            in_features = width
        super().__init__(*layers, SetLinear(n_sets, in_features, out_features))


class MeanFieldQNetwork(nn.Module):
    """Q(s, ., abar) of one team's agents (one weight set, agents folded into the batch), as in the MF-Q paper.

    The observation goes through a conv stack and a dense layer (image observations, channels last) or is used
    as it is (flat observations); the neighbours' mean action ``abar`` through a dense embedding (or as it is when
    ``mean_action_hidden`` is 0); both, concatenated, through the ``hidden`` ReLU layers to one Q per action.
    ``use_mean_action=False`` is the same network without ``abar``: independent Q-learning (IL).
    """

    def __init__(self, obs_shape: tuple[int, ...], n_actions: int, use_mean_action: bool, conv_channels: list[int],
                 conv_kernel: int, obs_hidden: int, mean_action_hidden: int, hidden: list[int]):
        super().__init__()
        self.use_mean_action = use_mean_action
        self.image = len(obs_shape) == 3
        if self.image:
            h, w, c = obs_shape
            layers: list[nn.Module] = []
            for width in conv_channels:
                layers += [nn.Conv2d(c, width, conv_kernel), nn.ReLU()]
                c, h, w = width, h - conv_kernel + 1, w - conv_kernel + 1
            self.obs_encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, obs_hidden), nn.ReLU())
            features = obs_hidden
        else:
            self.obs_encoder = nn.Flatten()
            features = math.prod(obs_shape)
        if use_mean_action and mean_action_hidden > 0:
            self.mean_action_encoder = nn.Sequential(nn.Linear(n_actions, mean_action_hidden), nn.ReLU())
            features += mean_action_hidden
        elif use_mean_action:
            self.mean_action_encoder = nn.Identity()
            features += n_actions
        layers = []
        for width in hidden:
            layers += [nn.Linear(features, width), nn.ReLU()]
            features = width
        self.head = nn.Sequential(*layers, nn.Linear(features, n_actions))

    def forward(self, obs: torch.Tensor, mean_action: torch.Tensor) -> torch.Tensor:
        """obs [B, *obs_shape], mean_action [B, n_actions] -> Q [B, n_actions]."""
        x = obs.float()
        if self.image:
            x = x.permute(0, 3, 1, 2)  # channels last -> first
        z = self.obs_encoder(x)
        if self.use_mean_action:
            z = torch.cat([z, self.mean_action_encoder(mean_action)], dim=-1)
        return self.head(z)
