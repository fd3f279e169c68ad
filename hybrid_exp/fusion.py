"""Fused seed arrays: M networks of one setup (one per trial seed) as one network.

Member m owns channel block m of every activation: (B, M*C, H, W), block m = channels
m*C .. (m+1)*C-1. Every layer acts on each block alone, so one forward pass computes all M
networks at once, in the kernels of one network (horizontal fusion, as HFTA, arXiv 2102.02344):

- a conv with ``groups`` g becomes one conv with M*g groups over M*C channels;
- BatchNorm over M*C channels is M independent BNs (statistics are per channel);
- a linear layer becomes ``MemberLinear``, one matmul per member in one batched matmul;
- element-wise and per-channel layers (activations, pooling, padding) need nothing;
- channel concatenation goes through ``cat_channels``, which concatenates within each block.

``fuse`` converts by layer type, never by unit: a new unit fuses without new code as long as it
builds from these layers and concatenates channels with ``cat_channels``. Every fused tensor is
its members' tensors concatenated along dim 0 (a 0-d tensor is shared: all members hold the
same, e.g. BN's batch counter), so ``member_state`` recovers member m's state_dict, in the
unfused network's key layout, by slicing.
"""
import copy

import torch
import torch.nn.functional as F
from torch import nn


def cat_channels(tensors: list[torch.Tensor], members: int) -> torch.Tensor:
    """Concatenate (B, M*C_i, H, W) tensors within each member's block: (B, M*sum C_i, H, W),
    in the inputs' memory layout.

    NHWC tensors (channels_last) are concatenated as (B, H, W, M, C_i) views on their last dim:
    reshaping across the channel dim of an NHWC tensor would copy it to NCHW, and every conv
    after it would pay layout copies forward and backward."""
    B, _, H, W = tensors[0].shape
    if all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors):
        blocks = [t.permute(0, 2, 3, 1).view(B, H, W, members, -1) for t in tensors]
        return torch.cat(blocks, dim=-1).view(B, H, W, -1).permute(0, 3, 1, 2)
    blocks = [t.reshape(B, members, -1, H, W) for t in tensors]
    return torch.cat(blocks, dim=2).reshape(B, -1, H, W)


class MemberLinear(nn.Module):
    """M linear layers C -> K at once: (B, M*C) -> (B, M*K).

    ``weight`` (M*K, C) and ``bias`` (M*K) are the members' ``nn.Linear`` tensors stacked along
    dim 0, so a member's slice is its linear layer's weight and bias exactly."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, members: int):
        super().__init__()
        self.weight, self.bias = nn.Parameter(weight), nn.Parameter(bias)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, M*C) -> (B, M*K)
        M, B = self.members, len(x)
        w = self.weight.view(M, -1, self.weight.shape[1])  # (M, K, C)
        y = torch.baddbmm(self.bias.view(M, 1, -1), x.view(B, M, -1).transpose(0, 1),
                          w.transpose(1, 2))  # (M, B, K)
        return y.transpose(0, 1).reshape(B, -1)


def stacked(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Member tensors along dim 0; a 0-d tensor (identical in every member) is shared."""
    return tensors[0].clone() if tensors[0].dim() == 0 else torch.cat(tensors)


def fuse_conv(convs: list[nn.Conv2d]) -> nn.Conv2d:
    first, M = convs[0], len(convs)
    fused = nn.Conv2d(M * first.in_channels, M * first.out_channels, first.kernel_size,
                      first.stride, first.padding, first.dilation, M * first.groups,
                      first.bias is not None, first.padding_mode,
                      device=first.weight.device, dtype=first.weight.dtype)
    fused.load_state_dict({k: stacked([c.state_dict()[k] for c in convs]) for k in fused.state_dict()})
    return fused


def fuse_batch_norm(norms: list[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    first = norms[0]
    fused = nn.BatchNorm2d(len(norms) * first.num_features, first.eps, first.momentum,
                           first.affine, first.track_running_stats,
                           device=first.weight.device, dtype=first.weight.dtype)
    fused.load_state_dict({k: stacked([n.state_dict()[k] for n in norms]) for k in fused.state_dict()})
    return fused


def fuse_linear(linears: list[nn.Linear]) -> MemberLinear:
    return MemberLinear(stacked([l.weight.detach() for l in linears]),
                        stacked([l.bias.detach() for l in linears]), len(linears))


FUSERS = {nn.Conv2d: fuse_conv, nn.BatchNorm2d: fuse_batch_norm, nn.Linear: fuse_linear}


def fuse(nets: list[nn.Module]) -> nn.Module:
    """One module computing every network of ``nets`` (equal architectures) on its own block.

    Layers in ``FUSERS`` are converted; any other module keeps its code, its children are fused,
    its own parameters and buffers stacked (its code must then act per member, as
    ``blocks.Equivalent``'s grouped conv over ``len(weight)`` groups does), and its ``members``
    attribute (if it has one: units that concatenate channels, networks with per-member
    randomness) set to ``len(nets)``. A torch layer with parameters but no rule is refused.
    """
    first = nets[0]
    if type(first) in FUSERS:
        return FUSERS[type(first)](nets)
    tensors = (*first.parameters(recurse=False), *first.buffers(recurse=False))
    if type(first).__module__.startswith("torch.nn") and tensors:
        raise TypeError(f"fusion has no rule for {type(first).__name__}, whose parameters would "
                        f"mix the members' channels: add one to hybrid_exp.fusion.FUSERS")
    # its code and settings, copied; its state (shared by the copy) replaced below, member-stacked
    fused = copy.deepcopy(first, memo={id(x): x for x in (*tensors, *first.children())})
    persistent = first.state_dict(keep_vars=True)
    for name, p in first.named_parameters(recurse=False):
        fused.register_parameter(name, nn.Parameter(stacked([n.get_parameter(name).detach() for n in nets]),
                                                    p.requires_grad))
    for name, _ in first.named_buffers(recurse=False):
        fused.register_buffer(name, stacked([n.get_buffer(name) for n in nets]), persistent=name in persistent)
    for name, _ in first.named_children():
        fused.add_module(name, fuse([n.get_submodule(name) for n in nets]))
    if type(first).get_extra_state is not nn.Module.get_extra_state:  # e.g. a random stream
        fused.set_extra_state(stacked([n.get_extra_state() for n in nets]))
    if hasattr(fused, "members"):
        fused.members = len(nets)
    return fused


def member_slices(tensor: torch.Tensor, members: int) -> list[torch.Tensor]:
    """Views of each member's part of a fused tensor (a 0-d tensor is every member's)."""
    return [tensor] * members if tensor.dim() == 0 else list(tensor.chunk(members))


def member_state(state: dict[str, torch.Tensor], member: int, members: int) -> dict[str, torch.Tensor]:
    """Member ``member``'s state_dict from a fused network's, in the unfused network's layout."""
    return {k: member_slices(v, members)[member].clone() for k, v in state.items()}


def channels(x: torch.Tensor, members: int) -> torch.Tensor:
    """(B, M*C, ...) -> (B, M, C, ...): the member axis made explicit."""
    return x.view(x.shape[0], members, -1, *x.shape[2:])


def per_member_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each member: logits (B, M*K), labels (B, M) -> (M,)."""
    B, M = labels.shape
    return F.cross_entropy(logits.view(B, M, -1).transpose(1, 2), labels, reduction="none").mean(0)


def contract_breach(unit: nn.Module, height: int = 4) -> str | None:
    """Why ``unit`` (a built conv unit, (B, C_in, H, W) -> (B, C_out, ...)) would not train
    exactly when fused (None: it would): two members (its weights, and others drawn at random)
    fused and fed their own inputs, in float64, against each member alone; the outputs, then the
    weight gradients of one step. What it catches: a ``torch.cat`` of channels (it mixes the
    members' blocks; ``cat_channels`` keeps them apart), or any layer that reads across members."""
    in_channels = next(m for m in unit.modules() if isinstance(m, nn.Conv2d)).in_channels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        members = [copy.deepcopy(unit).double().train() for _ in range(2)]
        with torch.no_grad():
            for p in members[1].parameters():
                p.add_(0.1 * torch.randn_like(p))
        fused = fuse([copy.deepcopy(m) for m in members])
        inputs = [torch.randn(2, in_channels, height, height, dtype=torch.float64) for _ in members]
        alone = [m(x) for m, x in zip(members, inputs)]
        together = fused(torch.cat(inputs, dim=1))  # the members' channel blocks, side by side
    expected = torch.cat(alone, dim=1)
    if together.shape != expected.shape or not torch.allclose(together, expected, rtol=1e-9, atol=1e-9):
        gap = (together - expected).abs().max().item() if together.shape == expected.shape else float("nan")
        return f"fused, each member's output differs from its own by up to {gap:.3g}"
    weights = [torch.randn_like(y) for y in alone]
    for y, w in zip(alone, weights):
        (y * w).sum().backward()
    (together * torch.cat(weights, dim=1)).sum().backward()
    grads = {name: p.grad for name, p in fused.named_parameters() if p.grad is not None}
    for m, member in enumerate(members):
        for name, p in member.named_parameters():
            if name in grads and not torch.allclose(member_slices(grads[name], 2)[m], p.grad, rtol=1e-9, atol=1e-9):
                return f"fused, the gradient of {name} differs from each member's own"
    return None

