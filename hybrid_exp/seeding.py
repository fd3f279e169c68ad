"""Named random streams: every source of randomness draws from its own derived seed."""
import hashlib

import torch


def derive_seed(*parts) -> int:
    """A 63-bit seed determined by ``parts`` (e.g. trial seed, stream name, epoch).

    Streams with different parts are independent for practical purposes, so the data order
    of a trial never depends on the model, and two variants never share initial weights.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


MASK32 = 0xFFFFFFFF


def mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (Mueller's xor-shift-multiply) of int64 values below 2**32.
    Every product stays below 2**63: the result is exact, the same on every device."""
    for _ in range(2):
        x = ((x ^ (x >> 16)) * 0x45D9F3B) & MASK32
    return x ^ (x >> 16)


def counter_uniform(seeds: torch.Tensor, step: torch.Tensor, stream: int, n: int) -> torch.Tensor:
    """(M, n) float64 numbers in [0, 1), number i of row m keyed on (seeds[m], step, stream, i):
    a counter-based stream computed on the seeds' device, bit for bit the same on a CPU and a
    GPU, with no host round trip (a CUDA graph can replay it). ``seeds`` (M,) int64 < 2**63,
    ``step`` a 0-d int64 tensor, ``stream`` an int < 2**32."""
    h = mix32(seeds & MASK32)
    for part in (seeds >> 32, step & MASK32, torch.full((), stream, device=seeds.device)):
        h = mix32(h ^ mix32(part))
    index = torch.arange(n, device=seeds.device)
    return mix32(h[:, None] ^ mix32(index)).double() / 2**32
