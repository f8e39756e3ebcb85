"""Fine-tuning decoders on prompt/response pairs (`cramlm finetune`): pairs.py, data.py, run.py."""
