"""The root of iceserv's error hierarchy and the shared error bases.

Every error iceserv raises derives from :class:`IceservError` and also from
the builtin it semantically is, so callers can catch either.  Errors carry
fields; callers never parse message text.
"""

__all__ = [
    "ConfigError",
    "IceservError",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
]


class IceservError(Exception):
    """Base class of every error raised by iceserv."""


class ProtocolError(IceservError):
    """Something went wrong speaking the icecream wire protocol.

    ``msg_type`` is the numeric message type involved, when one is known.
    """

    def __init__(self, message: str, *, msg_type: int | None = None) -> None:
        super().__init__(message)
        self.msg_type = msg_type


class LocalProtocolError(ProtocolError, RuntimeError):
    """We misused the protocol API (e.g. sent a message before the handshake)."""


class RemoteProtocolError(ProtocolError, ValueError):
    """The peer broke the protocol: a malformed, oversized or unexpected message."""


class ConfigError(IceservError, ValueError):
    """A configuration file, variable or flag is invalid.

    ``source`` names where the bad value came from (``path:line``, an
    environment variable or a flag); ``name`` is the setting.  ``details``
    holds one complete line per problem when several were found at once
    (each invalid value gets its own line); it defaults to the message.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str = "",
        name: str = "",
        details: tuple[str, ...] = (),
    ) -> None:
        super().__init__(message)
        self.source = source
        self.name = name
        self.details = details or (message,)
