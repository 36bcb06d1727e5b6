"""ml_playground: prepare, train, sample and compare small language models."""

__version__ = "0.1.0"
