"""distilwave service."""
