"""OpenAI-style HTTP serving of a checkpoint, with a static web playground (extra `serve`)."""
