"""Evaluations of a trained model: GLUE fine-tuning, perplexity, LAMBADA, MLM loss, fill-mask."""
