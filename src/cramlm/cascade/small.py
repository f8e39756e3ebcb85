"""A smaller model for the middle of a cascade: the first K layers of a pretrained encoder, as a run dir of its own.

`cramlm eval glue` then fine-tunes it exactly as it fine-tunes the full model, and `cramlm cascade fit --small`
puts it between the linear stage and the transformer. Keeping the lower layers (embeddings, blocks 0..K-1, the final
norm and the MLM head) reuses the pretrain for free; fine-tuning adapts the final norm to the shallower output.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from cramlm.errors import CramlmError


def shrink_run(run_dir: str | Path, layers: int, out: str | Path) -> Path:
    """Write `out/final/` (weights + config with n_layers = `layers`) and `out/tokenizer.json`."""
    from cramlm.models.registry import build_model
    from cramlm.train.checkpoint import load_model, save_final

    run_dir, out = Path(run_dir), Path(out)
    if not (run_dir / "tokenizer.json").is_file():
        raise CramlmError(f"{run_dir} is not a cramlm run dir with a tokenizer.json")
    if out.resolve() == run_dir.resolve() or (out / "final").exists():
        raise CramlmError(f"{out} already holds a model; give a new directory to --out")
    model, cfg = load_model(run_dir)
    if cfg.model.arch != "encoder":
        raise CramlmError(f"{run_dir} holds a {cfg.model.arch}; only an encoder can be fine-tuned as a stage")
    if not 1 <= layers < cfg.model.n_layers:
        raise CramlmError(f"--layers must be between 1 and {cfg.model.n_layers - 1} ({run_dir} has "
                          f"{cfg.model.n_layers} layers)")
    state = {k: v for k, v in model.state_dict().items()
             if not (k.startswith("blocks.") and int(k.split(".")[1]) >= layers)}
    small = cfg.model_copy(update={"model": cfg.model.model_copy(update={"n_layers": layers})})
    build_model(small.model).load_state_dict(state)  # strict: every kept weight has its place, none is missing
    save_final(out, state, small)
    shutil.copyfile(run_dir / "tokenizer.json", out / "tokenizer.json")
    return out
