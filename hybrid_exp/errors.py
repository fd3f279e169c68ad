"""What the user can mend, as one family: each error's message is the one sentence they see,
naming the fix; every entry point turns it into that sentence and an exit status, never a
traceback (``reported``). Light: no torch, no MLflow, so every module may raise these."""
import contextlib
import difflib
import errno
import sys

from hydra.errors import CompactHydraException

from hybrid_exp.redact import redact


class UserError(Exception):
    """A mistake or a fault the user can mend: its message is the sentence they see."""


class ConfigError(UserError, ValueError):
    """A config that cannot train."""


class DataError(UserError, RuntimeError):
    """Missing, corrupt or ill-shaped data."""


class TrackingUnavailable(UserError, RuntimeError):
    """The tracking store cannot be used: not reachable, or it refuses our credentials."""


class StoreFailed(UserError, RuntimeError):
    """The tracking store cannot be written or read now. Nothing trained is lost: each epoch's
    checkpoint stays, and the runs resume."""


class DiskFull(UserError, OSError):
    """No space left where a run writes (its checkpoint, the store's artifacts, the data cache):
    the run is interrupted, not failed, and a relaunch resumes it once there is space."""


def disk_full(error: BaseException) -> DiskFull | None:
    """``error`` as a ``DiskFull`` sentence, when it is the disk's ENOSPC; else None."""
    if not isinstance(error, OSError) or error.errno != errno.ENOSPC:
        return None
    where = f"the disk holding {error.filename}" if error.filename else "a disk the run writes to"
    return DiskFull(f"no space left on {where}: free space there, and run the same command again: "
                    f"finished runs are kept and interrupted ones resume from their last checkpoint")


class NoWeights(UserError, ValueError):
    """A run that stored no weights of the kind asked for."""


class Diverged(UserError, RuntimeError):
    """The training loss became NaN or infinite."""


class AnalysisError(UserError, ValueError):
    """Input the analysis cannot work with; the message says what is there instead."""


class AveragingRefused(AnalysisError):
    """A figure would average several runs that should be one point."""


class TooManyFailures(UserError, CompactHydraException):
    """A sweep stopped by its failed trials (Hydra prints a CompactHydraException's sentence)."""


class EndedWithoutResult(UserError, CompactHydraException):
    """A SLURM job ended (cancelled, out of memory, out of requeues) before it wrote a result."""


def leave(error: UserError, where: str = "", lead: str = "", status: int = 1) -> SystemExit:
    """The way out of an entry point for ``error``: its sentence (after ``lead``, and with
    ``where``, the job it was found in) on stderr, and exit ``status``; raise what this returns,
    ``from None``."""
    print(redact(f"{lead}{error}{where}"), file=sys.stderr)  # a sentence may quote a store's URL
    return SystemExit(status)


@contextlib.contextmanager
def reported(where: str = "", lead: str = "", status: int = 1):
    """Around an entry point's work: a ``UserError`` leaves as its sentence (``leave``). An
    entry point that says its errors as argparse does (the analysis) passes ``lead="error: "``
    and ``status=2``."""
    try:
        yield
    except UserError as e:
        raise leave(e, where, lead, status) from None


def closest(word: str, names: list[str]) -> str | None:
    """The name ``word`` most likely meant: one it abbreviates (learning_rate: lr), else the most
    similar."""
    initials = "".join(part[0] for part in word.split("_") if part)
    if len(initials) > 1 and initials in names:
        return initials
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.4)
    return close[0] if close else None


def did_you_mean(word: str, names: list[str], before: str = "") -> str:
    """'did you mean <before><name>? ' for the closest name ('model=', 'optim.' before it),
    '' when none is close."""
    close = closest(word, names)
    return f"did you mean {before}{close}? " if close else ""
