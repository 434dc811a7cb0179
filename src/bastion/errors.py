"""Typed exceptions. The library raises these; only the CLI turns them into exit codes.

Every message says what was wrong and, where it can, what to do about it.
"""

from __future__ import annotations


class BastionError(Exception):
    """Base class of every error bastion raises on purpose."""

    #: Exit status the CLI uses for this kind of error.
    exit_code = 2


class UsageError(BastionError):
    """An option or argument combination that cannot work."""


class DataError(BastionError):
    """A dataset that is missing, malformed, or outside its declared bounds."""


class ModelError(BastionError):
    """A model reference that cannot be resolved or loaded safely."""


class ThreatModelError(BastionError):
    """An invalid norm, eps or input bound."""


class AttackError(BastionError):
    """An attack that was misconfigured or cannot run on this model."""


class GradientUnavailable(AttackError, RuntimeError):
    """A model that computes no input gradient was asked for one (e.g. a model run on onnxruntime).

    Also a ``RuntimeError``, the error torch raises where a model gives no gradient, so the benchmark
    runner and the attack-failure indicators handle both alike (the attack fails, the report flags
    the gradients); at the command line it is one line.
    """


class OutputError(BastionError):
    """A file or folder bastion was asked to write that cannot be written: a missing or read-only
    folder, a directory or special file in the way, a full disk."""


class ConfigError(BastionError):
    """A malformed suite, recipe or policy file (names file, line and key where known)."""


class ClusterError(BastionError):
    """A distributed run that cannot go on: the cluster is unreachable, has no room for a worker, or keeps
    losing one (finished shards stay checkpointed: rerun with ``--resume``)."""


class KeySetError(ConfigError):
    """A JSON Web Key Set (a file, a URL's response, or a document) that is malformed or holds no usable key."""


class CheckFailed(BastionError):
    """A check ran and its answer is 'no': a bad signature, a denied token, a dangerous pickle.

    Distinct from bad input so scripts can tell "refused" (exit 1) from "could not run" (exit 2).
    """

    exit_code = 1


class VerificationError(CheckFailed):
    """A signature, digest or attestation did not verify."""


class KeyFileError(BastionError):
    """A key file that is missing, malformed, of an unsupported type, or would be overwritten."""


class TokenError(CheckFailed):
    """A caller token that is malformed, forged, expired or otherwise refused."""


class AccessDenied(CheckFailed):
    """A policy decision that denies the request."""


class UnsafeFileError(CheckFailed):
    """A file that would execute code when loaded (e.g. a pickle reaching a dangerous global)."""


class ModelRefused(VerificationError):
    """A model a policy does not let be served; ``kind`` names the check that said no (a short, fixed word)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def detail(exc: BaseException, limit: int = 300) -> str:
    """The first line of a third-party exception's message (at most ``limit`` characters), for the
    one-line errors bastion raises in its place."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else type(exc).__name__


class ServiceUnavailable(BastionError):
    """A service bastion depends on (the gateway's shared state in Redis) is unreachable or answered in error.

    Whatever needed it is refused, never allowed: the gateway answers 503 with ``Retry-After``.
    ``operation`` names what failed; ``retry_after`` is when trying again makes sense, in seconds.
    """

    def __init__(self, message: str, operation: str = "", retry_after: float = 1.0):
        super().__init__(message)
        self.operation = operation
        self.retry_after = retry_after


class TrainingProcessFailed(BastionError):
    """A process of a multi-process training job failed, and the launcher stopped the others.

    ``exit_code`` is the status the command exits with; ``reported`` means the failed process printed
    its own one-line error already, so the command adds none.
    """

    def __init__(self, message: str, *, exit_code: int, reported: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.reported = reported


def first_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, for one-line errors that wrap another library's exception."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:limit]}" if lines else type(exc).__name__
