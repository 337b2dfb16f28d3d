"""training/recipes."""
