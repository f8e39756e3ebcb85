"""Text generation with cramlm's causal decoder: KV cache, batched left-padded prompts, greedy or sampled.

    model, tokenizer = load_decoder("runs/gpt")
    prompts = [encode_prompt(tokenizer, "The history of")]
    new = generate(model, prompts, SamplingConfig(max_new_tokens=32), eos_id=SEP_ID, pad_id=PAD_ID)
    completion_text(tokenizer, prompts[0], new[0])
"""

from cramlm.generation.engine import OnToken, generate, generate_batches
from cramlm.generation.loading import load_decoder, resolve_device
from cramlm.generation.sampling import SamplingConfig
from cramlm.generation.text import completion_text, cut_at_stop, encode_prompt

__all__ = ["OnToken", "SamplingConfig", "completion_text", "cut_at_stop", "encode_prompt", "generate",
           "generate_batches", "load_decoder", "resolve_device"]
