"""sheesh: self-hosted isolated microVMs."""

__version__ = "0.1.0"
