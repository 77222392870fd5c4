"""The protocol's exception tree: what can be wrong with a message or a byte string.

The master maps these to 4xx replies in one place; the client reports them as failures of
the unit or retries. Every message says what to fix, in words a person can act on.
"""


class ProtocolError(ValueError):
    """A message, job file or quantity is malformed; the text says what to fix."""


class IntegrityError(ProtocolError):
    """Bytes do not match the xxh3-128 hash they were announced with."""

    def __init__(self, expected: str, actual: str, what: str = "data") -> None:
        super().__init__(f"{what} hashes to {actual}, expected {expected}")
        self.expected = expected
        self.actual = actual
