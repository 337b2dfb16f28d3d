"""distilwave models."""
