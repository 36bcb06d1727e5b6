"""analysis package: evaluation metrics, sample quality, plots, LIT."""
