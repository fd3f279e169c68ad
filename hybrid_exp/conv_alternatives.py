"""Other ways to compute the convs of a fused array, timed shape by shape (``python -m
hybrid_exp.bench --shapes``), to find where cuDNN's grouped conv is slow.

A fused array runs member m's conv on channel block m as one conv with M x g groups
(hybrid_exp.fusion). For some shapes that may be a slow kernel: the stem (3 input channels per
group), ResNeXt's grouped 3x3 (4 channels per group, 320 groups in an array of 10),
Inception's narrow 1x1s (64 -> 4 per member). Each alternative computes the same function:

- ``grouped``: what training runs, ``F.conv2d(x, w, groups=M*g)``;
- ``per_member``: one conv per member on its channel block (M kernels, then a concatenation);
- ``matmul`` (1x1, stride 1): one batched matmul over the G groups,
  (G, B*H*W, C_in/G) @ (G, C_in/G, C_out/G), on the NHWC rows as they lie in memory.

Training routes no shape elsewhere until a GPU's figures show one faster (docs/performance.md).
"""
import torch
import torch.nn.functional as F
from torch import nn

from hybrid_exp.fusion import cat_channels


def grouped(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int,
            members: int) -> torch.Tensor:
    return F.conv2d(x, w, None, stride, padding, 1, groups)


def per_member(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int,
               members: int) -> torch.Tensor:
    outputs = [F.conv2d(x_m, w_m, None, stride, padding, 1, groups // members)
               for x_m, w_m in zip(x.chunk(members, 1), w.chunk(members))]
    return cat_channels(outputs, 1)


def matmul(x: torch.Tensor, w: torch.Tensor, stride: int, padding: int, groups: int,
           members: int) -> torch.Tensor:
    B, C, H, W = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(-1, groups, C // groups).transpose(0, 1)  # (G, BHW, C_in/G)
    y = torch.bmm(rows, w.reshape(groups, -1, C // groups).transpose(1, 2))  # (G, BHW, C_out/G)
    return y.transpose(0, 1).reshape(B, H, W, -1).permute(0, 3, 1, 2)  # NHWC in memory


IMPLEMENTATIONS = {"grouped": grouped, "per_member": per_member, "matmul": matmul}


def applies(name: str, shape: dict) -> bool:
    """Whether implementation ``name`` computes this conv (``matmul``: 1x1 convs of stride 1)."""
    if name == "per_member":
        return shape["members"] > 1
    if name == "matmul":
        return shape["kernel"] == 1 and shape["stride"] == 1
    return True


def conv_shapes(net: nn.Module, step, members: int) -> list[dict]:
    """The distinct convs ``step()`` runs through ``net``'s ``nn.Conv2d`` layers: input shape,
    weight shape, stride, padding, groups, and how many layers of the network have that shape."""
    seen: dict[str, dict] = {}

    def record(conv: nn.Conv2d, inputs, output) -> None:
        shape = {"input": list(inputs[0].shape), "weight": list(conv.weight.shape),
                 "kernel": conv.kernel_size[0], "stride": conv.stride[0],
                 "padding": conv.padding[0], "groups": conv.groups, "members": members}
        key = repr(shape)
        seen.setdefault(key, {**shape, "layers": 0})["layers"] += 1

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, nn.Conv2d)]
    try:
        step()
    finally:
        for hook in hooks:
            hook.remove()
    return list(seen.values())
