"""argparse value types shared by the tlsm commands.

Each raises argparse.ArgumentTypeError with a message that names the value,
so `tlsm serve --port abc` reports "'abc' is not an integer".
"""

import argparse

from .keys import MAX_PAYLOAD_BYTES_LIMIT


def integer(text):
    """Parse a decimal integer."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _at_least(text, minimum):
    value = integer(text)
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
    return value


def positive(text):
    """Parse an integer of at least 1."""
    return _at_least(text, 1)


def non_negative(text):
    """Parse an integer of at least 0."""
    return _at_least(text, 0)


def port(text):
    """Parse a TCP port, 0 to 65535 (0 lets the OS pick a free one)."""
    value = integer(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be in 0..65535, got {value}")
    return value


def payload_limit(text):
    """Parse a payload size limit in bytes, 1 to the engine's hard ceiling."""
    value = integer(text)
    if not 1 <= value <= MAX_PAYLOAD_BYTES_LIMIT:
        raise argparse.ArgumentTypeError(
            f"must be in 1..{MAX_PAYLOAD_BYTES_LIMIT} bytes, got {value}"
        )
    return value
