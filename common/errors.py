"""One tree of domain errors, so the edges (CLI, gRPC servicer) can map each to a clear message or status."""

from __future__ import annotations


class FedError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(FedError):
    """A flag or setting is wrong; the message names the flag and how to fix it."""


class DataUnavailable(FedError):
    """A dataset or weights file could not be found or fetched; the message says where to put a local copy."""


class PrivacyRefused(FedError):
    """The data owner's own privacy limit (a client's --max-epsilon) forbids the task: the client stops, never trains past it."""


class BudgetReached(PrivacyRefused):
    """The next round would take this client's ε past its --max-epsilon: it has given what it allowed, and stops (exit 0)."""


class DependencyMissing(FedError):
    """An optional package is needed for what was asked; the message gives the install command."""


class WireFormatError(FedError):
    """Bytes that do not follow the tensor wire format."""


class TruncatedError(WireFormatError):
    """The stream or blob ended before the declared length."""


class CorruptError(WireFormatError):
    """The blob is structurally invalid (bad header, holes, unknown dtype, ...)."""


class OversizeError(WireFormatError):
    """The blob declares or sends more bytes than the receiver accepts."""


class DigestMismatch(WireFormatError):
    """The received bytes do not hash to the announced sha256."""


class UpdateRejected(FedError):
    """A well-formed update that does not fit the round (wrong tensors, stale round, non-finite values, ...).

    `reason` is a short stable key counted in the round log; the message is for the client.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class NotSelected(UpdateRejected):
    """The client is not expected to upload for this round (not selected, closed or already answered)."""


class UnknownSession(FedError):
    """A session id the server does not know: the client must reconnect."""


class SessionSuperseded(FedError):
    """A newer Connect with the same client name replaced this session."""


class FederationRefused(FedError):
    """The server will not admit this client (protocol mismatch, partitions full, ...)."""


class Unauthenticated(FedError):
    """Missing or wrong token, or a credential used for another client's name."""


class Overloaded(FedError):
    """The server is at a limit (clients, joins per second, a concurrent transfer): retry later."""


class ServerStopping(FedError):
    """The server is shutting down; the run resumes when it is back."""


class ServerUnavailable(FedError):
    """The server could not be reached within the allowed retries."""


class NothingListening(ServerUnavailable):
    """Nothing accepts connections at the server's address: not started yet, stopped, or the wrong port."""


class Terminated(BaseException):
    """Raised by a client's SIGTERM/SIGINT handler to unwind it (not an Exception: no `except Exception` swallows it).

    Not KeyboardInterrupt: CPython remembers a KeyboardInterrupt that passed through C code which runs Python
    via PyRun_* (torch does) as "unhandled", and at exit kills its own process with SIGINT, so a client
    that left cleanly would exit by signal (-2) instead of 130, at random."""
