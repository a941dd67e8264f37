"""The one exception type for a record that does not match its wire format."""


class RecordError(ValueError):
    """A record (or one of its headers) is malformed; the message names the field and the problem."""
