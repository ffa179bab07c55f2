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
from torch.nn import functional as F

from marlrun.errors import UserError


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


def im2col(x: torch.Tensor, k: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """[S, B, H, W, C] -> [S, B, H-k+1, W-k+1, k*k*C]: every k x k window as one row, ordered (di, dj, c).

    One strided copy of the overlapping windows (several times faster than concatenating the k*k shifted views).
    Inputs with few channels (the observation itself) gather instead, through ``index`` (``window_index``), which
    is faster when the contiguous runs are only a few elements long.
    """
    s, b, h, w, c = x.shape
    h2, w2 = h - k + 1, w - k + 1
    if index is not None:
        return x.reshape(s * b, h * w * c).index_select(1, index).view(s, b, h2, w2, k * k * c)
    x = x.contiguous()
    st = x.stride()
    windows = x.as_strided((s, b, h2, w2, k, k, c), (st[0], st[1], st[2], st[3], st[2], st[3], st[4]))
    return windows.reshape(s, b, h2, w2, k * k * c)


def window_index(h: int, w: int, c: int, k: int) -> torch.Tensor:
    """Flat (h, w, c) positions of every k x k window's elements, in im2col's order."""
    rows = torch.arange(h - k + 1).view(-1, 1, 1, 1, 1) + torch.arange(k).view(1, 1, k, 1, 1)
    cols = torch.arange(w - k + 1).view(1, -1, 1, 1, 1) + torch.arange(k).view(1, 1, 1, k, 1)
    return ((rows * w + cols) * c + torch.arange(c)).flatten()


class _SetConvReLU(torch.autograd.Function):
    """relu(im2col(x) @ W + b) per weight set, with a backward that avoids col2im.

    The gradient with respect to x is the transposed convolution: im2col of the output gradient padded by k-1,
    times the kernel flipped in both spatial dims. That is one more strided copy and one batched matmul, where
    autograd's own backward of the window copy scatters into a zeroed tensor k*k times.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, k, index):
        s, b, h, w, c = x.shape
        patches = im2col(x, k, index).to(weight.dtype)
        y = torch.baddbmm(bias, patches.view(s, -1, patches.shape[-1]), weight).relu_()
        ctx.save_for_backward(patches, weight, y)
        ctx.k, ctx.x_shape = k, x.shape
        return y.view(s, b, h - k + 1, w - k + 1, -1)

    @staticmethod
    def backward(ctx, grad):
        patches, weight, y = ctx.saved_tensors
        k, (s, b, h, w, c) = ctx.k, ctx.x_shape
        out = y.shape[-1]
        g = torch.ops.aten.threshold_backward(grad.reshape(y.shape), y, 0)  # ReLU: no gradient where it clamped
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            g_padded = F.pad(g.view(s, b, h - k + 1, w - k + 1, out), (0, 0, k - 1, k - 1, k - 1, k - 1))
            flipped = weight.view(s, k, k, c, out).flip(1, 2).transpose(3, 4).reshape(s, k * k * out, c)
            grad_x = torch.bmm(im2col(g_padded, k).view(s, -1, k * k * out), flipped).view(s, b, h, w, c)
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(patches.view(s, -1, patches.shape[-1]).transpose(1, 2), g)
        if ctx.needs_input_grad[2]:
            grad_b = g.sum(1, keepdim=True)
        return grad_x, grad_w, grad_b, None, None


class SetConv2dReLU(nn.Module):
    """[S, B, H, W, C] -> [S, B, H-k+1, W-k+1, C']: relu of a k x k convolution (stride 1, no padding), per set.

    One batched matmul over the im2col windows (on a CPU several times faster than a grouped convolution for the
    small images of grid worlds). Channels stay last. Under autocast the matmuls run in its dtype (bf16).
    ``in_size`` (H, W): the input's image size, needed only for inputs of fewer than 8 channels (gathered).
    """

    def __init__(self, n_sets: int, in_channels: int, out_channels: int, kernel_size: int, in_size: tuple[int, int] | None = None):
        super().__init__()
        self.k = kernel_size
        self.register_buffer("index", window_index(*in_size, in_channels, kernel_size) if in_channels < 8 and in_size else None, persistent=False)
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.empty(n_sets, fan_in, out_channels))  # rows ordered (di, dj, c)
        self.bias = nn.Parameter(torch.empty(n_sets, 1, out_channels))
        _uniform_(self.weight, fan_in)
        _uniform_(self.bias, fan_in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = autocast_dtype(x.device)
        return _SetConvReLU.apply(x, self.weight.to(dtype), self.bias.to(dtype), self.k, self.index)


def autocast_dtype(device: torch.device) -> torch.dtype:
    """The dtype matmuls run in here: autocast's when it is on for this device type, else float32."""
    if torch.is_autocast_enabled(device.type):
        return torch.get_autocast_dtype(device.type)
    return torch.float32


def check_convs_fit(n_convs: int, kernel: int, h: int, w: int) -> None:
    """A UserError when ``n_convs`` unpadded k x k convolutions would shrink an h x w observation below one cell."""
    if n_convs and min(h, w) - n_convs * (kernel - 1) < 1:
        most = (min(h, w) - 1) // n_convs + 1
        raise UserError(f"algo.conv_kernel: {n_convs} convolutions of {kernel}x{kernel} do not fit a {h}x{w} observation; "
                        f"use algo.conv_kernel <= {most} or fewer algo.conv_channels")


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
            check_convs_fit(len(conv_channels), conv_kernel, h, w)
            for width in conv_channels:
                layers.append(SetConv2dReLU(n_sets, c, width, conv_kernel, (h, w)))
                c, h, w = width, h - conv_kernel + 1, w - conv_kernel + 1
            flat = c * h * w
        else:
            flat = math.prod(obs_shape)
        self.convs = nn.Sequential(*layers)
        self.torso = nn.Sequential(SetLinear(n_sets, flat, hidden), nn.ReLU(inplace=True))
        # the value and advantage streams' hidden layers side by side: one matmul for both
        self.head_hidden = head_hidden
        self.heads = nn.Sequential(SetLinear(n_sets, hidden, 2 * head_hidden), nn.ReLU(inplace=True))
        self.value = SetLinear(n_sets, head_hidden, 1)
        self.advantage = SetLinear(n_sets, head_hidden, n_actions)

    def streams(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V(s) [S, B, 1] and A(s, .) [S, B, n_actions] in float32 from the torso's features ``z``."""
        h = self.heads(z)
        return self.value(h[..., : self.head_hidden]).float(), self.advantage(h[..., self.head_hidden :]).float()

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """Q values in float32, whatever precision the layers ran in."""
        x = obs.float()
        if self.image:
            x = self.convs(x)
        value, advantage = self.streams(self.torso(x.flatten(2)))
        return value + advantage - advantage.mean(-1, keepdim=True)


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
            layers += [SetLinear(n_sets, in_features, width), nn.ReLU(inplace=True)]
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
            check_convs_fit(len(conv_channels), conv_kernel, h, w)
            layers: list[nn.Module] = []
            for width in conv_channels:
                layers += [nn.Conv2d(c, width, conv_kernel), nn.ReLU(inplace=True)]
                c, h, w = width, h - conv_kernel + 1, w - conv_kernel + 1
            self.obs_encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * h * w, obs_hidden), nn.ReLU(inplace=True))
            features = obs_hidden
        else:
            self.obs_encoder = nn.Flatten()
            features = math.prod(obs_shape)
        if use_mean_action and mean_action_hidden > 0:
            self.mean_action_encoder = nn.Sequential(nn.Linear(n_actions, mean_action_hidden), nn.ReLU(inplace=True))
            features += mean_action_hidden
        elif use_mean_action:
            self.mean_action_encoder = nn.Identity()
            features += n_actions
        layers = []
        for width in hidden:
            layers += [nn.Linear(features, width), nn.ReLU(inplace=True)]
            features = width
        self.head = nn.Sequential(*layers, nn.Linear(features, n_actions))

    def forward(self, obs: torch.Tensor, mean_action: torch.Tensor) -> torch.Tensor:
        """obs [B, *obs_shape], mean_action [B, n_actions] -> Q [B, n_actions], in float32 whatever the layers ran in."""
        x = obs.float()
        if self.image:
            x = x.permute(0, 3, 1, 2)  # channels last -> first
        z = self.obs_encoder(x)
        if self.use_mean_action:
            z = torch.cat([z, self.mean_action_encoder(mean_action).to(z.dtype)], dim=-1)
        return self.head(z).float()


class RunningNorm(nn.Module):
    """Running mean and variance of a stream of values, as debiased exponential averages (MAPPO's ValueNorm; PPO's
    value targets, QMIX's standardised rewards)."""

    def __init__(self, beta: float = 0.99999, eps: float = 1e-5):
        super().__init__()
        self.beta, self.eps = beta, eps
        self.register_buffer("mean", torch.zeros(()))
        self.register_buffer("mean_sq", torch.zeros(()))
        self.register_buffer("debias", torch.zeros(()))

    def update(self, x: torch.Tensor) -> None:
        self.mean.mul_(self.beta).add_((1 - self.beta) * x.mean())
        self.mean_sq.mul_(self.beta).add_((1 - self.beta) * (x * x).mean())
        self.debias.mul_(self.beta).add_(1 - self.beta)

    def stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        mean = self.mean / self.debias.clamp(min=self.eps)
        var = (self.mean_sq / self.debias.clamp(min=self.eps) - mean**2).clamp(min=1e-2)
        return mean, var.sqrt()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats()
        return (x - mean) / std

    def denormalize(self, y: torch.Tensor) -> torch.Tensor:
        mean, std = self.stats()
        return y * std + mean
