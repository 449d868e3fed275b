"""Model card and hub upload for a trained reward model.

The hub token is read from the environment only (``HF_TOKEN``, or the login
that ``huggingface_hub`` finds); it is never written to a file or a log. The
endpoint follows ``HF_ENDPOINT``, which is how the tests point it at a fake
server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

# Never uploaded: intermediate checkpoints (optimizer states), local logs.
IGNORE = ["checkpoint-*", "checkpoint-*/**", "runs/**", "wandb/**", "*.pt", "*.pth", "training_args.bin",
          ".final-model.partial/**"]


def _weight_stats(data: Any) -> dict[str, float]:
    if data is None or "weight" not in data.column_names or len(data) == 0:
        return {}
    import numpy as np

    w = np.asarray(data["weight"], dtype=np.float64)
    return {"mean": round(float(w.mean()), 4), "max": round(float(w.max()), 4), "min": round(float(w.min()), 4)}


def write_model_card(
    output_dir: Path, config: Any, record: dict[str, Any], data_card: dict[str, Any], metrics: dict[str, Any],
    train_data: Any = None,
) -> Path:
    """``README.md`` in ``output_dir``: base model, data card, loss, weights, evaluation numbers."""
    prep = data_card.get("config", {})
    loss_text = {
        "weighted": "weighted Bradley-Terry on partial pairs, -w log sigmoid(r(x, y_w[:t]) - r(x, y_l[:t])) "
                    "(SP-PRM Eq. 3; w = 1/H_t from the reference RM)",
        "unweighted": "Bradley-Terry on partial pairs without weights (SP-PRM Eq. 2, the paper's ablation)",
        "orm": "Bradley-Terry on full responses (an outcome reward model)",
    }[config.loss]
    stats = data_card.get("stats", {})
    weights = _weight_stats(train_data)
    evals = {k: v for k, v in metrics.items() if k.startswith("eval_")}
    lines = [
        "---",
        "library_name: transformers",
        "tags: [reward-model, sp-prm, process-reward-model]",
        "---",
        "",
        f"# {'SP-PRM process' if config.loss != 'orm' else 'Outcome'} reward model",
        "",
        f"Trained with `sp-prm train` from **{config.model_name_or_path}**.",
        "",
        "## Training",
        "",
        f"- loss: `{config.loss}`: {loss_text}",
        f"- center_rewards_coefficient: {config.center_rewards_coefficient}",
        f"- learning rate {config.learning_rate}, epochs {config.num_train_epochs}, per-device batch "
        f"{config.per_device_train_batch_size}, gradient accumulation {config.gradient_accumulation_steps}, "
        f"scheduler {config.lr_scheduler_type}, LoRA: {config.use_peft}",
        f"- prefix representation (use the same when decoding): `{json.dumps(record['prefix'])}`",
        "",
        "## Data",
        "",
        f"- dataset: `{config.dataset}` (fingerprint `{data_card.get('fingerprint')}`)",
    ]
    if prep:
        lines += [
            f"- source `{prep.get('source')}`, {str(prep.get('truncation', '')).upper()} truncation"
            f"{' (K = ' + str(prep.get('sst_k')) + ')' if prep.get('truncation') == 'sst' else ''}, "
            f"reference RM `{prep.get('reference_model')}`, weight cap {prep.get('weight_cap')}, "
            f"normalisation {prep.get('weight_normalize')}",
            f"- counts: `{json.dumps(data_card.get('counts', {}))}`",
        ]
        if stats:
            lines.append(f"- reference statistics: `{json.dumps({k: v for k, v in stats.items() if k != 'gap_histogram'})}`")
    if "skipped_at_tokenization" in data_card:  # loss=orm: rows of the raw source dropped by reason
        loader = data_card.get("loader", {})
        skips = {**loader.get("skipped", {}), **{f"tokenization_{k}": v
                                                  for k, v in data_card["skipped_at_tokenization"].items()}}
        lines.append(f"- source rows read {loader.get('rows_read')}, pairs kept {loader.get('rows_kept')}; skipped: "
                     + (", ".join(f"{k} {v}" for k, v in sorted(skips.items()) if v) or "none"))
    elif data_card.get("loader"):
        loader = data_card["loader"]
        lines.append(f"- source rows read {loader.get('rows_read')}, kept {loader.get('rows_kept')}; skipped by the "
                     "loader: " + (", ".join(f"{k} {v}" for k, v in sorted(loader.get("skipped", {}).items()) if v)
                                   or "none"))
    if weights:
        lines.append(f"- training weights: mean {weights['mean']}, max {weights['max']}, min {weights['min']}")
    lines += ["", "## Results", ""]
    lines += [f"- {k}: {round(v, 4) if isinstance(v, float) else v}" for k, v in sorted(metrics.items())]
    if not evals:
        lines.append("- no held-out evaluation (set eval_fraction)")
    lines += ["", "## Parameters", "", "```json", json.dumps(record, indent=2), "```", ""]
    path = Path(output_dir) / "README.md"
    path.write_text("\n".join(lines))
    return path


def check_hub() -> str:
    """Pre-flight of ``push_to_hub``, run before training: a token is set and the hub accepts it.

    Returns the account name. Raises :class:`~sp_prm.errors.ServiceError` (no token, offline mode, hub
    unreachable, token refused or read-only) so a run never trains for hours and then fails to upload.
    The token is read by ``huggingface_hub`` from the environment or its login and never printed.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.errors import HfHubHTTPError

    from sp_prm.errors import ServiceError

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    after = "nothing was trained"
    if constants.HF_HUB_OFFLINE:
        raise ServiceError(f"push_to_hub is on but HF_HUB_OFFLINE is set: the hub ({endpoint}) cannot be reached",
                           hint=f"unset HF_HUB_OFFLINE, or pass --push_to_hub false; {after}")
    if not get_token():
        raise ServiceError("push_to_hub is on but no hub token is set",
                           hint=f"export HF_TOKEN=<a write token> (or run `hf auth login`), or pass --push_to_hub "
                                f"false; {after}")
    try:
        info = HfApi(endpoint=endpoint).whoami()
    except HfHubHTTPError as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        raise ServiceError(f"the hub at {endpoint} refused the token (HTTP {status})",
                           hint=f"set HF_TOKEN to a valid write token; {after}") from None
    except Exception as err:  # connection refused, DNS, TLS, timeout: whatever the HTTP client raises
        raise ServiceError(f"cannot reach the hub at {endpoint} ({type(err).__name__})",
                           hint=f"check the connection and HF_ENDPOINT, or pass --push_to_hub false; {after}") from None
    role = ((info.get("auth") or {}).get("accessToken") or {}).get("role")
    if role == "read":
        raise ServiceError(f"the hub token of {info.get('name')} is read-only; push_to_hub needs write access",
                           hint=f"set HF_TOKEN to a write token; {after}")
    return str(info.get("name"))


def push_to_hub(output_dir: Path, repo_id: str, private: bool = True) -> str:
    """Upload the final model folder (no intermediate checkpoints); returns the commit URL."""
    from huggingface_hub import HfApi

    # HfApi reads HF_ENDPOINT and HF_TOKEN itself; passing nothing keeps the token out of our code paths.
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None)
    repo = api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(
        folder_path=str(output_dir), repo_id=repo.repo_id, repo_type="model", ignore_patterns=IGNORE,
        commit_message="sp-prm train: upload reward model",
    )
    return str(getattr(info, "commit_url", info))
