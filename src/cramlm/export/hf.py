"""Export cramlm models as plain `transformers` checkpoints, and import them back.

No custom code is shipped: each model is mapped onto an architecture whose maths are exactly ours, so
`AutoModelFor...from_pretrained(dir)` works without `trust_remote_code` and gives the same logits.

- pre-norm encoder with rotary positions and a gated FFN (`bert-crammed`) -> ModernBERT (all layers global)
- post-norm encoder with learned or scaled-sinusoidal positions and a GELU FFN (`bert-original`) -> BERT
  (the scaled sinusoid is baked into BERT's position table; missing biases become zeros)
- decoder with RMSNorm, SwiGLU and rotary positions (`gpt-small`) -> Llama
Any other combination (and mixture-of-experts models) is refused with the first setting that does not fit.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cramlm.config import ModelConfig
from cramlm.data.tokenizer import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS
from cramlm.errors import CramlmError
from cramlm.models import mup
from cramlm.models.encoder import Encoder, EncoderForSequenceClassification
from cramlm.models.layers import ffn_hidden
from cramlm.models.registry import build_model

# What each target requires of a ModelConfig: (field, required value or tuple of allowed values).
REQUIREMENTS: dict[str, list[tuple[str, object]]] = {
    "modernbert": [("norm", "layernorm"), ("norm_position", "pre"), ("ffn", ("geglu", "swiglu")),
                   ("positions", "rotary"), ("embedding_norm", True), ("final_norm", True),
                   ("head_transform", True)],
    "bert": [("norm", "layernorm"), ("norm_position", "post"), ("ffn", "gelu"),
             ("positions", ("learned", "sinusoidal")), ("embedding_norm", True), ("final_norm", False),
             ("head_transform", True)],
    "llama": [("norm", "rmsnorm"), ("norm_position", "pre"), ("ffn", "swiglu"), ("positions", "rotary"),
              ("embedding_norm", False), ("final_norm", True)],
}

# Module renames (our module regex -> HF module names; several names = our weight split in equal row blocks).
_MODERNBERT_TRUNK = [
    (r"embed\.tok", ["model.embeddings.tok_embeddings"]),
    (r"embed\.norm", ["model.embeddings.norm"]),
    (r"blocks\.(\d+)\.attn_norm", ["model.layers.{0}.attn_norm"]),
    (r"blocks\.(\d+)\.attn\.qkv", ["model.layers.{0}.attn.Wqkv"]),
    (r"blocks\.(\d+)\.attn\.out", ["model.layers.{0}.attn.Wo"]),
    (r"blocks\.(\d+)\.ffn_norm", ["model.layers.{0}.mlp_norm"]),
    (r"blocks\.(\d+)\.ffn\.inp", ["model.layers.{0}.mlp.Wi"]),
    (r"blocks\.(\d+)\.ffn\.out", ["model.layers.{0}.mlp.Wo"]),
    (r"final_norm", ["model.final_norm"]),
]
_BERT_ATTN = "bert.encoder.layer.{0}.attention"
_BERT_TRUNK = [
    (r"embed\.tok", ["bert.embeddings.word_embeddings"]),
    (r"embed\.pos", ["bert.embeddings.position_embeddings"]),
    (r"embed\.norm", ["bert.embeddings.LayerNorm"]),
    (r"blocks\.(\d+)\.attn\.qkv", [f"{_BERT_ATTN}.self.query", f"{_BERT_ATTN}.self.key", f"{_BERT_ATTN}.self.value"]),
    (r"blocks\.(\d+)\.attn\.out", [f"{_BERT_ATTN}.output.dense"]),
    (r"blocks\.(\d+)\.attn_norm", [f"{_BERT_ATTN}.output.LayerNorm"]),
    (r"blocks\.(\d+)\.ffn\.inp", ["bert.encoder.layer.{0}.intermediate.dense"]),
    (r"blocks\.(\d+)\.ffn\.out", ["bert.encoder.layer.{0}.output.dense"]),
    (r"blocks\.(\d+)\.ffn_norm", ["bert.encoder.layer.{0}.output.LayerNorm"]),
]
RULES: dict[tuple[str, str], list[tuple[str, list[str]]]] = {
    ("modernbert", "mlm"): _MODERNBERT_TRUNK + [
        (r"transform\.dense", ["head.dense"]), (r"transform\.norm", ["head.norm"]), (r"decoder", ["decoder"])],
    ("modernbert", "classification"): [(r"encoder\." + p, t) for p, t in _MODERNBERT_TRUNK] + [
        (r"pool\.dense", ["head.dense"]), (r"pool\.norm", ["head.norm"]), (r"classifier", ["classifier"])],
    ("bert", "mlm"): _BERT_TRUNK + [
        (r"transform\.dense", ["cls.predictions.transform.dense"]),
        (r"transform\.norm", ["cls.predictions.transform.LayerNorm"]),
        (r"decoder", ["cls.predictions.decoder"])],
    ("llama", "causal"): [
        (r"embed\.tok", ["model.embed_tokens"]),
        (r"blocks\.(\d+)\.attn_norm", ["model.layers.{0}.input_layernorm"]),
        (r"blocks\.(\d+)\.attn\.qkv", ["model.layers.{0}.self_attn." + p for p in ("q_proj", "k_proj", "v_proj")]),
        (r"blocks\.(\d+)\.attn\.out", ["model.layers.{0}.self_attn.o_proj"]),
        (r"blocks\.(\d+)\.ffn_norm", ["model.layers.{0}.post_attention_layernorm"]),
        (r"blocks\.(\d+)\.ffn\.inp", ["model.layers.{0}.mlp.gate_proj", "model.layers.{0}.mlp.up_proj"]),
        (r"blocks\.(\d+)\.ffn\.out", ["model.layers.{0}.mlp.down_proj"]),
        (r"final_norm", ["model.norm"]),
        (r"head", ["lm_head"]),
    ],
}
# HF weights stored under two names (BERT's decoder bias); the first is filled from the second.
_ALIASES = {"cls.predictions.bias": "cls.predictions.decoder.bias"}
# Our weights that a target has no place for because they are unused by that model (the MLM head of a classifier).
_UNUSED = {("modernbert", "classification"): r"encoder\.(transform|decoder)\..*"}


def task_of(model: nn.Module) -> str:
    if isinstance(model, EncoderForSequenceClassification):
        return "classification"
    return "mlm" if isinstance(model, Encoder) else "causal"


def target_for(cfg: ModelConfig, task: str) -> str:
    """The transformers family this config maps onto exactly, or a one-line CramlmError saying why none does."""
    if cfg.moe.n_experts:
        raise CramlmError("cannot export a mixture-of-experts model: no transformers architecture routes tokens "
                          "with cramlm's capacity limit exactly")
    if cfg.arch == "decoder":
        target = "llama"
    else:
        target = "bert" if cfg.norm_position == "post" else "modernbert"
    for key, want in REQUIREMENTS[target]:
        have = getattr(cfg, key)
        if have not in (want if isinstance(want, tuple) else (want,)):
            wanted = " or ".join(map(str, want)) if isinstance(want, tuple) else want
            raise CramlmError(f"cannot export exactly: transformers' {target} needs model.{key}={wanted} "
                              f"(this model has {have})")
    if (target, task) not in RULES:
        raise CramlmError(f"cannot export a {task} model as {target}: its head differs from cramlm's "
                          f"(classifiers export from rotary pre-norm encoders, as ModernBERT)")
    return target


def hf_config(cfg: ModelConfig, target: str, task: str, num_labels: int = 2):
    """The transformers config whose model computes exactly what `cfg` computes."""
    from transformers import BertConfig, LlamaConfig, ModernBertConfig

    common = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, num_hidden_layers=cfg.n_layers,
                  num_attention_heads=cfg.n_heads, max_position_embeddings=cfg.max_seq_len,
                  tie_word_embeddings=cfg.tie_embeddings, pad_token_id=PAD_ID, initializer_range=cfg.init_std)
    if target == "llama":
        return LlamaConfig(**common, intermediate_size=ffn_hidden(cfg), num_key_value_heads=cfg.n_heads,
                           hidden_act="silu", rms_norm_eps=cfg.norm_eps, attention_bias=cfg.bias, mlp_bias=cfg.bias,
                           attention_dropout=cfg.dropout, bos_token_id=CLS_ID, eos_token_id=SEP_ID,
                           rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta})
    if target == "bert":
        return BertConfig(**common, intermediate_size=cfg.d_ff, hidden_act="gelu", layer_norm_eps=cfg.norm_eps,
                          hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout, type_vocab_size=2)
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return ModernBertConfig(
        **common, intermediate_size=ffn_hidden(cfg), hidden_activation="gelu" if cfg.ffn == "geglu" else "silu",
        norm_eps=cfg.norm_eps, norm_bias=cfg.bias, attention_bias=cfg.bias, mlp_bias=cfg.bias, decoder_bias=cfg.bias,
        classifier_bias=cfg.bias if task == "mlm" else True, classifier_activation="gelu", classifier_pooling="cls",
        attention_dropout=cfg.dropout, mlp_dropout=cfg.dropout, embedding_dropout=cfg.dropout,
        classifier_dropout=cfg.dropout, layer_types=["full_attention"] * cfg.n_layers,
        rope_parameters={"full_attention": dict(rope), "sliding_attention": dict(rope)},
        bos_token_id=CLS_ID, cls_token_id=CLS_ID, eos_token_id=SEP_ID, sep_token_id=SEP_ID, num_labels=num_labels,
    )


def _hf_names(rules: list[tuple[str, list[str]]], key: str) -> list[str] | None:
    module, _, param = key.rpartition(".")
    for pattern, targets in rules:
        m = re.fullmatch(pattern, module)
        if m:
            return [t.format(*m.groups()) + "." + param for t in targets]
    return None


def _our_state(model: nn.Module, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Our state dict with the scaled-sinusoidal scale replaced by the position table it produces, and muP's
    multipliers folded into the weights."""
    state = {k: v.detach() for k, v in model.state_dict().items()}
    classifier = isinstance(model, EncoderForSequenceClassification)
    trunk = model.encoder if classifier else model
    mup.fold_for_export(state, cfg, prefix="encoder." if classifier else "")
    if cfg.positions == "sinusoidal":
        state.pop("embed.pos.scale")
        state["embed.pos.weight"] = trunk.embed.position_table(cfg.max_seq_len).detach()
    return state


def to_hf_state(model: nn.Module, cfg: ModelConfig, target: str, hf_keys: dict[str, torch.Tensor]):
    """Our weights under the HF names in `hf_keys`; HF-only biases (BERT without biases) and token types are zeros."""
    task = task_of(model)
    rules, unused = RULES[target, task], _UNUSED.get((target, task))
    out: dict[str, torch.Tensor] = {}
    for key, tensor in _our_state(model, cfg).items():
        names = _hf_names(rules, key)
        if names is None:
            if unused and re.fullmatch(unused, key):
                continue
            raise CramlmError(f"internal: no {target} name for weight {key}")
        for name, part in zip(names, tensor.chunk(len(names), dim=0)):
            out[name] = part.clone()
    for name, same in _ALIASES.items():
        if same in out:
            out[name] = out[same]
    for name, ref in hf_keys.items():
        if name not in out:
            if not (name.endswith(".bias") or "token_type_embeddings" in name):
                raise CramlmError(f"internal: {target} weight {name} has no cramlm counterpart")
            out[name] = torch.zeros_like(ref)
    return out


def export_model(model: nn.Module, cfg: ModelConfig, out_dir: str | Path, tokenizer_file: str | Path | None = None,
                 labels: list[str] | None = None) -> str:
    """Write `model` as a transformers checkpoint (+ tokenizer) in `out_dir`; returns the HF architecture name.
    A classifier's `labels` become the config's id2label, so pipelines print names, not LABEL_0."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    task = task_of(model)
    target = target_for(cfg, task)
    num_labels = model.num_labels if task == "classification" else 2
    config = hf_config(cfg, target, task, num_labels)
    if labels:
        config.id2label = dict(enumerate(labels))
        config.label2id = {name: i for i, name in enumerate(labels)}
    auto = {"mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM,
            "classification": AutoModelForSequenceClassification}[task]
    hf = auto.from_config(config)
    hf.load_state_dict(to_hf_state(model, cfg, target, hf.state_dict()))
    out_dir = Path(out_dir)
    hf.eval().save_pretrained(out_dir)
    if tokenizer_file is not None:
        save_tokenizer(tokenizer_file, out_dir, cfg, with_token_types=target == "bert")
    return type(hf).__name__


def save_tokenizer(tokenizer_file: str | Path, out_dir: Path, cfg: ModelConfig, with_token_types: bool) -> None:
    """Our tokenizer.json as a PreTrainedTokenizerFast with cramlm's special tokens; `token_type_ids` only for
    BERT, the one target whose forward takes them."""
    from transformers import PreTrainedTokenizerFast

    pad, unk, cls, sep, mask = SPECIAL_TOKENS
    extra = {"eos_token": sep, "bos_token": cls} if cfg.arch == "decoder" else {}
    names = ["input_ids", "token_type_ids", "attention_mask"] if with_token_types else ["input_ids", "attention_mask"]
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_file), model_max_length=cfg.max_seq_len,
                                  pad_token=pad, unk_token=unk, cls_token=cls, sep_token=sep, mask_token=mask,
                                  model_input_names=names, **extra)
    tok.save_pretrained(out_dir)


def export_run(run_dir: str | Path, out_dir: str | Path, verify: bool = True) -> dict:
    """`cramlm export`: the final model of a run dir (plus its tokenizer) as a transformers checkpoint; with
    `verify`, reload it through transformers and report the largest logit difference."""
    from cramlm.train.checkpoint import load_model

    run_dir = Path(run_dir)
    model, run_cfg = load_model(run_dir)
    target_for(run_cfg.model, task_of(model))  # refuse before writing anything
    tokenizer = run_dir / "tokenizer.json"
    task = run_dir / "task.json"  # a fine-tuned classifier of `eval glue` names its labels there
    labels = json.loads(task.read_text()).get("label_names") if task.is_file() else None
    arch = export_model(model, run_cfg.model, out_dir, tokenizer if tokenizer.is_file() else None, labels)
    result = {"architecture": arch, "out_dir": str(out_dir), "tokenizer": tokenizer.is_file()}
    if verify:
        result["max_abs_diff"] = verify_export(model, out_dir)
    return result


@torch.no_grad()
def verify_export(model: nn.Module, out_dir: str | Path, seq_len: int = 32) -> float:
    """Largest |logit difference| between `model` and the exported checkpoint reloaded by transformers' Auto class,
    on random tokens with one padded row."""
    from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoModelForSequenceClassification

    task = task_of(model)
    auto = {"mlm": AutoModelForMaskedLM, "causal": AutoModelForCausalLM,
            "classification": AutoModelForSequenceClassification}[task]
    hf = auto.from_pretrained(out_dir).eval()
    cfg = model.cfg
    L = min(seq_len, cfg.max_seq_len)
    ids = torch.randint(len(SPECIAL_TOKENS), cfg.vocab_size, (2, L), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, L // 2:] = 0
    ours = model.eval()(ids, attention_mask=mask).logits
    theirs = hf(input_ids=ids, attention_mask=mask).logits
    if task != "classification":
        keep = mask.bool()
        ours, theirs = ours[keep], theirs[keep]
    return float((ours - theirs).abs().max())


# ---------------------------------------------------------------- import


def _from_hf_config(hf: dict) -> tuple[ModelConfig, str, str, int]:
    kind, arch = hf.get("model_type"), (hf.get("architectures") or [""])[0]
    common = dict(vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
                  n_heads=hf["num_attention_heads"], max_seq_len=hf["max_position_embeddings"],
                  tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02))
    if kind == "llama":
        if hf.get("num_key_value_heads", hf["num_attention_heads"]) != hf["num_attention_heads"]:
            raise CramlmError("cannot import a Llama with grouped-query attention (cramlm uses full multi-head)")
        bias = bool(hf.get("attention_bias"))
        if bool(hf.get("mlp_bias")) != bias:
            raise CramlmError("cannot import a Llama whose attention and MLP disagree on biases")
        cfg = ModelConfig(arch="decoder", **common, d_ff=2 * hf["intermediate_size"], norm="rmsnorm",
                          norm_eps=hf["rms_norm_eps"], ffn="swiglu", positions="rotary", embedding_norm=False,
                          rope_theta=hf["rope_parameters"]["rope_theta"], bias=bias, sparse_head=False,
                          head_transform=False)
        return cfg, "llama", "causal", 2
    if kind == "modernbert":
        if any(t != "full_attention" for t in hf["layer_types"]):
            raise CramlmError("cannot import a ModernBERT with local (sliding-window) attention layers")
        biases = {hf[k] for k in ("norm_bias", "attention_bias", "mlp_bias")}
        if len(biases) != 1 or hf.get("hidden_activation") not in ("gelu", "silu"):
            raise CramlmError("cannot import this ModernBERT: mixed bias settings or an activation cramlm lacks")
        task = "classification" if "SequenceClassification" in arch else "mlm"
        cfg = ModelConfig(arch="encoder", **common, d_ff=2 * hf["intermediate_size"], norm_eps=hf["norm_eps"],
                          ffn="geglu" if hf["hidden_activation"] == "gelu" else "swiglu", positions="rotary",
                          rope_theta=hf["rope_parameters"]["full_attention"]["rope_theta"], bias=biases.pop())
        return cfg, "modernbert", task, len(hf.get("id2label") or {0: 0, 1: 1})
    if kind == "bert" and arch == "BertForMaskedLM":
        cfg = ModelConfig(arch="encoder", **common, d_ff=hf["intermediate_size"], norm_position="post",
                          norm_eps=hf["layer_norm_eps"], final_norm=False, ffn="gelu", positions="learned", bias=True,
                          sparse_head=False)
        return cfg, "bert", "mlm", 2
    raise CramlmError(f"cannot import {arch or kind!r}: cramlm reads ModernBERT, BertForMaskedLM and Llama checkpoints")


def import_model(hf_dir: str | Path) -> tuple[nn.Module, ModelConfig]:
    """A transformers checkpoint written by `export_model` (or compatible) as a cramlm model in eval mode."""
    hf_dir = Path(hf_dir)
    try:
        hf_cfg = json.loads((hf_dir / "config.json").read_text())
        hf_state = load_file(str(hf_dir / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as e:
        raise CramlmError(f"{hf_dir} is not a transformers checkpoint: {e}") from None
    try:
        cfg, target, task, num_labels = _from_hf_config(hf_cfg)
    except (KeyError, TypeError) as e:
        raise CramlmError(f"{hf_dir}/config.json lacks or mistypes a field cramlm needs: {e}") from None
    model = EncoderForSequenceClassification(cfg, num_labels) if task == "classification" else build_model(cfg)
    if "bert.embeddings.token_type_embeddings.weight" in hf_state:  # segment 0 folds into the positions
        hf_state["bert.embeddings.position_embeddings.weight"] = (
            hf_state["bert.embeddings.position_embeddings.weight"]
            + hf_state["bert.embeddings.token_type_embeddings.weight"][0])
    for name, same in _ALIASES.items():
        if same not in hf_state and name in hf_state:
            hf_state[same] = hf_state[name]
    rules, unused = RULES[target, task], _UNUSED.get((target, task))
    tied_output = r"(encoder\.)?(decoder|head)\.weight" if cfg.tie_embeddings else None
    state = {}
    for key in model.state_dict():
        names = _hf_names(rules, key)
        if names and all(n in hf_state for n in names):
            state[key] = torch.cat([hf_state[n] for n in names], dim=0)
        elif not any(p and re.fullmatch(p, key) for p in (unused, tied_output)):
            raise CramlmError(f"{hf_dir}: no weight for cramlm's {key}")
    model.load_state_dict(state, strict=False)  # what is left out is tied to the embedding or unused by the head
    return model.eval(), cfg
