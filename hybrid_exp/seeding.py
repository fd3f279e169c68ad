"""Named random streams: every source of randomness draws from its own derived seed."""
import hashlib


def derive_seed(*parts) -> int:
    """A 63-bit seed determined by ``parts`` (e.g. trial seed, stream name, epoch).

    Streams with different parts are independent for practical purposes, so the data order
    of a trial never depends on the model, and two variants never share initial weights.
    """
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
