"""distilwave training."""
