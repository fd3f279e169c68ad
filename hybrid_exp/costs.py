"""What a training step costs, counted from the network as it runs: FLOPs and bytes moved.

Every Fig. 4 setup is memory-bound on a GPU (its FLOPs are minutes of the protocol, its bytes
an hour), so the benchmark reports both, and the share of the device's memory bandwidth a step
reaches. ``flop_counter`` is torch's ``FlopCounterMode`` with a convolution-backward formula
that counts groups (torch's counts the input gradient of a grouped conv as a dense one: a
depthwise layer's backward came out ~C times too large). ``Traffic`` counts the bytes each
operator reads and writes, as eager execution moves them (no two ops fused): the memory traffic
that cuDNN kernels really pay, an upper bound for compiled code that fuses element-wise ops.
"""
import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

aten = torch.ops.aten


def conv_flops(x_shape, w_shape, out_shape) -> int:
    """2 x multiply-adds of a convolution, groups counted: each output value is a dot product
    over ``w_shape[1]`` (= C_in / groups) input channels times the kernel."""
    return 2 * math.prod(out_shape) * math.prod(w_shape[1:])


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation,
                        transposed, _output_padding, _groups, output_mask, out_shape=None, **_) -> int:
    """The input gradient and the weight gradient each cost one forward convolution."""
    forward = conv_flops(grad_out_shape if transposed else x_shape, w_shape,
                         x_shape if transposed else grad_out_shape)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def flop_counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={aten.convolution_backward: conv_backward_flops})


class Traffic(TorchDispatchMode):
    """Bytes read and written by every operator run inside it (``bytes``): each tensor argument
    is read once, each output written once, each argument an in-place op mutates written once
    more. Views move no data and count nothing."""

    def __init__(self):
        super().__init__()
        self.bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not func.is_view:
            size = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)
            tensors = lambda tree: [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor)]
            inputs = tensors((args, kwargs))
            mutated = [a for a, arg in zip(args, func._schema.arguments)
                       if arg.alias_info is not None and arg.alias_info.is_write]
            fresh = [t for t in tensors(out) if not any(t is i for i in inputs)]
            self.bytes += size(inputs) + size(tensors(mutated)) + size(fresh)
        return out


def step_costs(step) -> dict[str, int]:
    """FLOPs and bytes of one call of ``step`` (e.g. a training step), in the dtypes it runs in."""
    with flop_counter() as flops, Traffic() as traffic:
        step()
    return {"flops": flops.get_total_flops(), "bytes": traffic.bytes}
