"""Run configuration: pydantic sections, YAML presets and dotted command-line overrides.

A run's config is resolved in this order, later wins: defaults < recipe preset < model preset < YAML file <
`section.key=value` overrides. Unknown keys and bad values are one-line `CramlmError`s that name the key.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cramlm.errors import CramlmError
from cramlm.units import parse_interval, parse_quantity

PRESET_ALIASES = {"bert-base": "bert-original"}


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PruneConfig(Section):
    method: Literal["none", "cluster", "proxy"] = "none"
    keep: float = Field(0.7, gt=0.0, le=1.0, description="fraction of documents kept")
    keep_hard: bool = Field(True, description="keep the hardest documents (abundant data) instead of the easiest")
    n_clusters: int = Field(64, ge=2)
    seed: int = 0


class DataConfig(Section):
    seq_len: int = Field(128, ge=8, le=65536, description="tokens per packed sequence")
    vocab_size: int = Field(32768, ge=64, le=1 << 22)
    tokenizer: Literal["wordpiece", "bpe", "unigram"] = "wordpiece"
    tokenizer_file: str | None = Field(None, description="reuse an existing tokenizer.json instead of training one")
    lowercase: bool = True
    tokenizer_sample_mb: float = Field(64.0, gt=0, description="MB of text sampled to train the tokenizer")
    text_field: str = "text"
    documents: Literal["auto", "paragraphs", "lines", "file"] = Field(
        "auto", description="how plain text becomes documents; auto: lines when a file has no blank line, else "
        "paragraphs")
    val_fraction: float = Field(0.01, ge=0.0, lt=0.5, description="fraction of documents held out (at least one)")
    min_chars: int = Field(32, ge=0)
    max_chars: int = Field(5_000_000, ge=1, description="longer documents are split at paragraph, line or "
                           "sentence boundaries")
    dedup: bool = True
    near_dedup: bool = False
    near_dedup_threshold: float = Field(0.8, gt=0.0, le=1.0)
    max_symbol_ratio: float = Field(0.5, gt=0.0, le=1.0, description="drop documents mostly not letters")
    max_tokens_per_char_z: float | None = Field(3.0, description="compression filter: z-score cut, None = off")
    order: Literal["shuffle", "frequency", "none"] = "shuffle"
    shard_mb: float = Field(128.0, gt=0)
    seed: int = 0
    prune: PruneConfig = PruneConfig()


class MoEConfig(Section):
    n_experts: int = Field(0, ge=0, description="0 = dense feed-forward")
    top_k: int = Field(2, ge=1)
    capacity_factor: float = Field(1.25, gt=0)
    aux_loss_weight: float = Field(0.01, ge=0)
    z_loss_weight: float = Field(0.001, ge=0)
    every: int = Field(1, ge=1, description="use MoE in every n-th block")


class ModelConfig(Section):
    arch: Literal["encoder", "decoder"] = "encoder"
    n_layers: int = Field(16, ge=1)
    d_model: int = Field(768, ge=8)
    n_heads: int = Field(12, ge=1)
    d_ff: int = Field(3072, ge=1)
    vocab_size: int = Field(32768, ge=16)
    max_seq_len: int = Field(128, ge=8)
    norm: Literal["layernorm", "rmsnorm"] = "layernorm"
    norm_position: Literal["pre", "post"] = "pre"
    norm_eps: float = Field(1e-12, gt=0)
    final_norm: bool = True
    embedding_norm: bool = True
    ffn: Literal["gelu", "geglu", "swiglu"] = "geglu"
    positions: Literal["learned", "sinusoidal", "rotary", "none"] = "sinusoidal"
    rope_theta: float = Field(10000.0, gt=0)
    bias: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    tie_embeddings: bool = True
    sparse_head: bool = Field(True, description="project only masked positions to the vocabulary")
    head_transform: bool = Field(True, description="BERT's dense+act+norm before the MLM decoder")
    init_std: float = Field(0.02, gt=0)
    parametrization: Literal["standard", "mup"] = Field(
        "standard", description="mup: maximal-update parametrization, so a learning rate tuned narrow transfers wide")
    base_width: int | None = Field(
        None, ge=8, description="mup: the width the learning rate was tuned at (default: d_model)")
    moe: MoEConfig = MoEConfig()

    @field_validator("n_heads")
    @classmethod
    def _heads_divide(cls, v: int, info: Any) -> int:
        d = info.data.get("d_model")
        if d is not None and d % v:
            raise ValueError(f"d_model={d} is not divisible by n_heads={v}")
        return v


class FSDPConfig(Section):
    reshard_after_forward: bool = Field(True, description="true = ZeRO-3, false = ZeRO-2")
    cpu_offload: bool = False
    mixed_precision: bool = True


class DeepSpeedConfig(Section):
    stage: Literal[1, 2, 3] = 2
    offload: bool = False


SPARSE_LAYERS = ("attn.qkv", "attn.out", "ffn.inp", "ffn.out")


class SparsityConfig(Section):
    """SWAT (Raihan & Aamodt 2020): top-K weights in the forward, top-K activations saved for the backward."""

    method: Literal["none", "swat"] = "none"
    weights: float = Field(0.8, ge=0.0, lt=1.0, description="fraction of each weight matrix zeroed in the forward")
    activations: float = Field(0.8, ge=0.0, lt=1.0, description="fraction of each input activation zeroed in what "
                               "the backward keeps (the weight gradient's input)")
    granularity: Literal["tensor", "row"] = Field("tensor", description="top-K over the whole matrix or per row")
    layers: list[str] = Field(list(SPARSE_LAYERS), description="block matrices to sparsify")
    warmup: float = Field(0.05, ge=0.0, lt=1.0, description="fraction of the budget trained dense first")
    semi_structured_2_4: bool = Field(False, description="CUDA: 2 of every 4 weights, as a semi-structured tensor")
    export: Literal["masked", "dense"] = Field("masked", description="final/ weights: with the final mask applied, "
                                               "or the dense weights")

    @field_validator("layers")
    @classmethod
    def _layers(cls, v: list[str]) -> list[str]:
        for name in v:
            if name.split(".")[0] in ("embed", "embeddings", "head", "decoder", "transform", "lm_head"):
                raise ValueError(f"{name!r}: embeddings and heads are never sparsified (choose from "
                                 f"{', '.join(SPARSE_LAYERS)})")
            if name not in SPARSE_LAYERS:
                raise ValueError(f"unknown layer {name!r} (choose from {', '.join(SPARSE_LAYERS)})")
        if not v:
            raise ValueError("name at least one layer")
        return v

    @field_validator("semi_structured_2_4")
    @classmethod
    def _two_four(cls, v: bool, info: Any) -> bool:
        if v and info.data.get("weights") != 0.5:
            raise ValueError("2:4 keeps 2 of every 4 weights: set train.sparsity.weights=0.5")
        return v


class TrainConfig(Section):
    batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="global sequences per optimizer step (the ramp's target); auto = from the budget")
    max_batch_size: int = Field(8192, ge=1, description="the largest batch `batch_size: auto` may choose")
    micro_batch_size: Union[Annotated[int, Field(ge=1)], Literal["auto"]] = Field(
        "auto", description="sequences per forward/backward on one device; auto = from the budget and device")
    lr: Union[Annotated[float, Field(gt=0)], Literal["auto"]] = Field(
        "auto", description="peak learning rate; auto = from the batch and the model width")
    lr_scaling: Literal["none", "linear", "sqrt"] = "none"
    optimizer: Literal["auto", "adamw", "muon"] = Field(
        "auto", description="muon: orthogonalised momentum for the hidden matrices, AdamW for the rest; auto = "
        "Muon where the strategy keeps whole matrices (one device, DDP), AdamW otherwise")
    schedule: Literal["one-cycle", "cosine", "wsd", "constant", "linear"] = "one-cycle"
    warmup: float = Field(0.75, ge=0.0, le=1.0, description="fraction of the budget to reach peak LR")
    cooldown: float = Field(0.2, ge=0.0, le=1.0, description="wsd: fraction of the budget spent decaying")
    lr_start: float = Field(0.25, ge=0.0, le=1.0, description="LR at progress 0 as a fraction of peak")
    lr_end: float = Field(0.0, ge=0.0, le=1.0, description="LR at progress 1 as a fraction of peak")
    batch_ramp: Literal["linear", "step", "auto", "none"] = "linear"
    ramp_end: float = Field(0.6, ge=0.0, le=1.0, description="fraction of the budget at which the ramp ends")
    weight_decay: float = Field(0.01, ge=0.0)
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-12, gt=0)
    grad_clip: float = Field(0.5, ge=0.0, description="0 = off")
    decay_norms_and_biases: bool = False
    mask_rate: float = Field(0.25, gt=0.0, lt=1.0)
    whole_word_mask: bool = False
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    compile: Union[bool, Literal["auto"]] = "auto"
    strategy: Literal["auto", "single", "ddp", "zero1", "fsdp", "tp", "fsdp+tp", "deepspeed"] = "auto"
    tp_size: int = Field(1, ge=1)
    fsdp: FSDPConfig = FSDPConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()
    sparsity: SparsityConfig = SparsityConfig()
    checkpoint_every: str = "30m"
    keep_checkpoints: int = Field(2, ge=1)
    log_every: int = Field(10, ge=1, description="optimizer steps between log records")
    val_every: str = "10m"
    val_batches: int = Field(16, ge=1)
    max_bad_steps: int = Field(20, ge=1, description="non-finite steps tolerated before a rollback")
    spike_factor: float = Field(3.0, gt=1.0, description="loss above factor x running mean is a spike")
    rollback_lr_factor: float = Field(0.5, gt=0.0, le=1.0)
    tensorboard: bool = False
    wandb: bool = False

    @field_validator("checkpoint_every", "val_every")
    @classmethod
    def _interval(cls, v: str, info: Any) -> str:
        try:
            parse_interval(v, info.field_name)
        except CramlmError as e:
            raise ValueError(str(e)) from None
        return v


class BudgetConfig(Section):
    limit: str = Field("10m", description="wall-clock (24h), flops (3e18flops), tokens, steps or usd")
    hardware: str = Field("auto", description="catalogue name for peak FLOP/s and price; auto = detect")
    count: int = Field(1, ge=1, description="number of devices")
    price_per_hour: float | None = Field(None, ge=0, description="USD per device-hour; None = catalogue price")
    region: str = Field("world", description="grid carbon intensity region")
    pue: float = Field(1.1, ge=1.0, description="data-centre power usage effectiveness")

    @field_validator("limit")
    @classmethod
    def _limit(cls, v: str) -> str:
        try:
            parse_quantity(v)
        except CramlmError as e:
            raise ValueError(str(e)) from None
        return v


class EvalConfig(Section):
    batch_size: int = Field(16, ge=1)
    lr: float = Field(4e-5, gt=0)
    epochs: float = Field(5, gt=0)
    warmup: float = Field(0.1, ge=0.0, lt=1.0)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    weight_decay: float = Field(0.01, ge=0.0)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    max_seq_len: int = Field(128, ge=8)
    seeds: list[int] = [0]
    max_train_examples: int | None = None
    tasks: list[str] = ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]


class RunConfig(Section):
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    budget: BudgetConfig = BudgetConfig()
    eval: EvalConfig = EvalConfig()

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, path: Path) -> None:
        Path(path).write_text(self.to_yaml())


# ---------------------------------------------------------------- presets and resolution


def presets_dir() -> Path:
    return Path(str(resources.files("cramlm") / "configs"))


def list_presets(kind: Literal["model", "recipe"]) -> list[str]:
    return sorted(p.stem for p in (presets_dir() / kind).glob("*.yaml"))


def load_preset(kind: Literal["model", "recipe"], name: str) -> dict[str, Any]:
    """A preset as a nested dict; model presets hold the `model` section only."""
    name = PRESET_ALIASES.get(name, name)
    if kind == "model":
        from cramlm.models.family import parse

        shape = parse(name)
        if shape is not None:
            return {"model": shape.model_section()}
    path = presets_dir() / kind / f"{name}.yaml"
    if not path.is_file():
        names = list_presets(kind)
        aliases = [f"{a} (= {n})" for a, n in PRESET_ALIASES.items() if n in names]
        family = " or a family member such as encoder-4x256 (see docs/train.md)" if kind == "model" else ""
        raise CramlmError(f"unknown {kind} preset {name!r} (available: {', '.join(names + aliases)}{family})")
    data = _read_yaml(path)
    return {"model": data} if kind == "model" else data


def load_yaml(path: Path, what: str = "config file") -> Any:
    """Safe YAML from a user's file; a missing file or bad YAML is a one-line CramlmError naming `what`."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise CramlmError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as e:
        raise CramlmError(f"{what} {path} is not valid YAML: {str(e).splitlines()[0]}") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    data = load_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CramlmError(f"config file {path} must hold a mapping of sections (data, model, train, ...)")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=1e-3` -> (['train', 'lr'], 0.001); values are read as YAML scalars or lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise CramlmError(f"override {text!r} must look like section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Deep merge: nested mappings merge, anything else replaces."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _set_dotted(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CramlmError(f"config key {'.'.join(path)}: {part} is not a section")
    node[path[-1]] = value


def _check_keys(tree: dict[str, Any], schema: type[BaseModel], prefix: str = "") -> None:
    """Name the first unknown key with the known ones, before pydantic's longer message."""
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        field = schema.model_fields.get(key)
        if field is None:
            leaf = dotted
            while isinstance(value, dict) and len(value) == 1:
                (sub_key, value), = value.items()
                leaf += f".{sub_key}"
            known = ", ".join(schema.model_fields)
            where = f"in {prefix[:-1]}" if prefix else "at the top level"
            raise CramlmError(f"unknown config key {leaf!r}: no {key!r} {where} (known: {known})")
        sub = field.annotation
        if isinstance(value, dict) and isinstance(sub, type) and issubclass(sub, BaseModel):
            _check_keys(value, sub, dotted + ".")


def build_config(tree: dict[str, Any]) -> RunConfig:
    """Validate a nested dict into a RunConfig; errors name the dotted key."""
    _check_keys(tree, RunConfig)
    try:
        return RunConfig.model_validate(tree)
    except ValidationError as e:
        err = e.errors()[0]
        # a field that is a number or `auto` reports the branch it tried (`constrained-int`) as part of the key
        parts = [str(p) for p in err["loc"]]
        key = ".".join(p for p in parts if p.isidentifier() or p.isdigit())
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        msg = err["msg"].removeprefix("Value error, ")
        if len(parts) > len(key.split(".")):
            msg += ", or auto"
        raise CramlmError(f"config key {key}: {msg}{shown}") from None


def resolve_config(
    *,
    model: str | None = None,
    recipe: str | None = None,
    config_file: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    base: dict[str, Any] | None = None,
) -> RunConfig:
    """Resolve a run config: base < recipe preset < model preset < YAML file < dotted overrides."""
    tree: dict[str, Any] = dict(base or {})
    if recipe:
        tree = merge(tree, load_preset("recipe", recipe))
    if model:
        tree = merge(tree, load_preset("model", model))
    if config_file:
        tree = merge(tree, _read_yaml(Path(config_file)))
    for text in overrides:
        path, value = parse_override(text)
        _set_dotted(tree, path, value)
    return build_config(tree)


def load_run_config(path: str | Path) -> RunConfig:
    """The resolved config saved in a run dir (`config.yaml`)."""
    return build_config(_read_yaml(Path(path)))
