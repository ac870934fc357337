"""prefalign: align language models with human preference data."""

from prefalign import objectives
from prefalign.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "__version__", "objectives"]
