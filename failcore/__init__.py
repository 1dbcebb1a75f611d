"""failcore: an execution chokepoint and flight recorder for AI agents, built as a mitmproxy addon."""

__version__ = "0.1.0"
