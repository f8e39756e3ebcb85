"""Export cramlm models to transformers checkpoints and import them back."""
