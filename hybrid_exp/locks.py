"""Claims held by a process until it exits, however it exits: an exclusive ``flock`` on a lock
file that names its holder. A config's claim (one trainer per config, hybrid_exp.train) and a
GPU slot's (hydra_plugins.hybrid_exp_launcher.gpus) are both these. Hand-written rather than
with ``filelock``: the files are opened without following links, with mode 0600, and they say
who holds them."""
import fcntl
import os
from pathlib import Path


def claim(path: Path, holder: str, wait: bool = False) -> int | None:
    """The open descriptor of ``path``, locked by this process and naming ``holder``; None when
    another process holds it (with ``wait``, block until it is free instead). Closing the
    descriptor, or the process ending, releases it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder[:2000].encode(), 0)
    except OSError as e:  # a full disk: the lock holds, naming no holder; say which file
        os.close(fd)
        raise OSError(e.errno, e.strerror, str(path)) from e
    return fd


def holder(path: Path) -> str:
    """Who holds a claim, as its lock file says."""
    try:
        return path.read_text().strip() or "a process that did not say"
    except OSError:
        return "a process that did not say"
