"""Plain PyTorch models: the crammed encoder, a causal decoder, mixture-of-experts feed-forward."""

from cramlm.models.decoder import Decoder
from cramlm.models.encoder import Encoder, EncoderForSequenceClassification
from cramlm.models.layers import ModelOutput
from cramlm.models.registry import build_model

__all__ = ["Decoder", "Encoder", "EncoderForSequenceClassification", "ModelOutput", "build_model"]
