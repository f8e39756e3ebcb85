"""The bidirectional encoder (crammed BERT or original BERT by config) with its MLM and classification heads."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from cramlm.config import ModelConfig
from cramlm.models import mup
from cramlm.models.layers import ModelOutput, Trunk, cross_entropy, init_weights, make_norm


class Transform(nn.Module):
    """dense -> GELU -> norm: BERT's MLM head transform, also the pooler of the classification head."""

    def __init__(self, cfg: ModelConfig, bias: bool):
        super().__init__()
        self.dense = nn.Linear(cfg.d_model, cfg.d_model, bias=bias)
        self.norm = make_norm(cfg)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(F.gelu(self.dense(x)))


class Encoder(Trunk):
    """Masked-LM encoder. With `sparse_head` and `mask_positions`, only those positions reach the vocabulary
    projection: at 25% masking that skips three quarters of the largest matmul, with static shapes."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        self.transform = Transform(cfg, cfg.bias) if cfg.head_transform else nn.Identity()
        self.decoder = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.bias)
        self.decoder.is_readout = True
        self.logit_mult = mup.logit_multiplier(cfg)
        init_weights(self, cfg)
        if cfg.tie_embeddings:
            self.decoder.weight = self.embed.tok.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        mask_positions: Tensor | None = None,
    ) -> ModelOutput:
        """Logits are (B, k, V) at `mask_positions` (k per row) with the sparse head, else (B, L, V).
        `labels` are (B, L) with -100 where nothing is predicted."""
        h, aux, metrics = self.hidden_states(input_ids, attention_mask)
        if self.cfg.sparse_head and mask_positions is not None:
            h = h.gather(1, mask_positions[..., None].expand(-1, -1, h.shape[-1]))
            if labels is not None:
                labels = labels.gather(1, mask_positions)
        logits = self.decoder(self.transform(h))
        if self.logit_mult != 1.0:
            logits = logits * self.logit_mult
        loss = None
        if labels is not None:
            loss = cross_entropy(logits, labels)
            if aux is not None:
                metrics["mlm_loss"] = loss.detach()
                loss = loss + aux
        return ModelOutput(loss, logits, aux, metrics)


class EncoderForSequenceClassification(nn.Module):
    """The encoder with a classifier on the first token (dense -> GELU -> norm -> dropout -> linear).
    `num_labels == 1` is regression (MSE), otherwise cross-entropy. Load pretrained weights into `.encoder`."""

    def __init__(self, cfg: ModelConfig, num_labels: int):
        super().__init__()
        self.cfg, self.num_labels = cfg, num_labels
        self.encoder = Encoder(cfg)
        self.pool = Transform(cfg, bias=True)
        self.drop = nn.Dropout(cfg.dropout)
        self.classifier = nn.Linear(cfg.d_model, num_labels)
        self.classifier.is_readout = True
        init_weights(self.pool, cfg)
        init_weights(self.classifier, cfg)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.blocks

    def forward(
        self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None
    ) -> ModelOutput:
        h, aux, metrics = self.encoder.hidden_states(input_ids, attention_mask)
        logits = self.classifier(self.drop(self.pool(h[:, 0])))
        loss = None
        if labels is not None:
            if self.num_labels == 1:
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.float())
            else:
                loss = F.cross_entropy(logits.float(), labels.long())
            if aux is not None:
                loss = loss + aux
        return ModelOutput(loss, logits, aux, metrics)
