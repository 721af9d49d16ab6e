"""Error types shared across longvid: each names what was wrong and where."""


class LongvidError(Exception):
    """Base class for every error longvid raises on purpose."""


class ConfigError(LongvidError, ValueError):
    """An unknown key or an impossible value in a config or on the command line."""


class DataError(LongvidError, ValueError):
    """A malformed dataset row; the message names `file:line` and the field."""


class VideoError(LongvidError):
    """A video that cannot be decoded; the message names the file and the reason."""
