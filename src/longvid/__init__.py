"""longvid: teach vision-language models to reason about long videos."""

__version__ = "0.1.0"
