"""The exceptions raised by the tokend client.

Every message is the daemon's own sentence (or, for errors found on this
side, a sentence naming the socket); no message, ``str()`` or ``repr()``
ever contains a token.
"""

from __future__ import annotations

from typing import Optional

__all__ = [
    "Error",
    "Unreachable",
    "PermissionDenied",
    "NotUsable",
    "UnknownCredential",
]


class Error(Exception):
    """Any error from tokend or from talking to it.

    Attributes:
        code: the daemon's error code (``"unknown_credential"``,
            ``"not_usable"``, ``"timeout"``, …) or, for errors found by the
            client, ``"unreachable"``, ``"impostor"`` or ``"protocol"``.
        status: the HTTP status of the answer, or ``None`` when there was no
            answer.
        message: one sentence saying what went wrong.
    """

    def __init__(self, message: str, code: str = "error", status: Optional[int] = None):
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"message={self.message!r})"
        )

    def __reduce__(self):
        return (type(self), (self.message, self.code, self.status))


class Unreachable(Error):
    """The daemon could not be reached: no socket, nobody listening, the
    connection broke, or no answer within the timeout."""

    def __init__(self, message: str, code: str = "unreachable", status: Optional[int] = None):
        super().__init__(message, code, status)


class PermissionDenied(Error):
    """The daemon (or the socket's file permissions) refused this user."""


class NotUsable(Error):
    """The credential exists but cannot give a token now.

    Attributes:
        state: the credential's state, e.g. ``"needs-login"``,
            ``"failing"`` or ``"refreshing"`` (``None`` if not given).
    """

    def __init__(
        self,
        message: str,
        code: str = "not_usable",
        status: Optional[int] = None,
        state: Optional[str] = None,
    ):
        super().__init__(message, code, status)
        self.state = state

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(code={self.code!r}, status={self.status!r}, "
            f"state={self.state!r}, message={self.message!r})"
        )

    def __reduce__(self):
        return (type(self), (self.message, self.code, self.status, self.state))


class UnknownCredential(Error):
    """No credential has this name."""
