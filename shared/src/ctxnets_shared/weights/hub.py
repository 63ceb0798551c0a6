"""Publishing a converted folder on the Hugging Face Hub with a generated model card.

``ctxnets convert MODEL CKPT OUT --push-to-hub USER/REPO`` writes ``OUT/README.md`` (:func:`model_card`:
the paper and its citation, measured parameters and GMACs beside the paper's, the official top-1, the
license, and how the file was converted and verified) and uploads the folder with ``huggingface_hub``
(installed with timm; ``pip install huggingface_hub`` otherwise). Nothing is uploaded without the flag.
The folder is timm's local-dir layout, so the published repository loads with
``timm.create_model("hf-hub:USER/REPO", pretrained=True)`` once the package is imported.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch.nn as nn

from ctxnets_shared.models.cfg import paper_numbers
from ctxnets_shared.profiling.counting import count_gflops, count_params

__all__ = ["model_card", "push_folder", "sha256_of"]


def sha256_of(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_card(
    model: nn.Module,
    model_name: str,
    *,
    repo_id: str,
    source: str | os.PathLike[str],
    converter: str,
    package: str,
    package_version: str,
    citation: str = "",
    verified: str = "",
) -> str:
    """The README.md of a published converted checkpoint.

    Args:
        model: the converted model (its ``pretrained_cfg`` holds the paper's numbers and sources).
        model_name: registered architecture name.
        repo_id: the Hub repository (``user/name``) the card is written for.
        source: the official checkpoint file that was converted (its name and SHA-256 go on the card).
        converter: the converter's class name.
        package: the pip distribution that registers the model.
        package_version: its version.
        citation: the paper's BibTeX.
        verified: what the package's tests establish about the conversion (the converter's ``verified``).
    """
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    paper = paper_numbers(cfg)
    img = int(paper.get("paper_img_size") or cfg.get("input_size", (3, 224, 224))[-1])
    params = count_params(model)
    gmacs = count_gflops(model, (3, img, img))
    license_id = cfg.get("license") or "apache-2.0"
    top1 = paper.get("paper_top1")
    page = cfg.get("weights_page") or cfg.get("url") or cfg.get("origin_url")

    def num(v: Any, fmt: str) -> str:
        return format(v, fmt) if v is not None else "n/a"

    lines = [
        "---",
        "library_name: timm",
        f"license: {license_id}",
        "tags: [image-classification, timm, ctxnets]",
        "---",
        "",
        f"# {model_name} ({cfg.get('tag') or 'official'})",
        "",
        f"Official ImageNet-1k weights of **{model_name}** from *{cfg.get('paper_name')}* "
        f"({cfg.get('paper_ids')}), converted to safetensors for the `{package}` package.",
        "",
        "```python",
        f"import {_import_name(package)}  # registers {model_name} with timm",
        "import timm",
        "",
        f'model = timm.create_model("hf-hub:{repo_id}", pretrained=True).eval()',
        "```",
        "",
        "| | this checkpoint | paper |",
        "|---|---|---|",
        f"| parameters | {params:,} | {num(paper.get('paper_params'), ',')} |",
        f"| GMACs at {img} px | {gmacs:.2f} | {num(paper.get('paper_gflops'), '')} |",
        f"| ImageNet-1k top-1 (%) | not re-measured | {num(top1, '')} |",
        "",
        "## How it was converted and verified",
        "",
        f"- Source: the official checkpoint `{Path(source).name}` (SHA-256 `{sha256_of(source)}`) "
        f"from {page}; official code: {cfg.get('origin_url')}.",
        f"- Converted with `ctxnets convert` ({package} {package_version}, `{converter}`): the file was read "
        "with a weights-only unpickler (no code runs), the official keys mapped to ours, and every key "
        "and shape checked against the model before writing.",
        f"- Verified in `{package}`'s tests: "
        + (verified or "official-layout checkpoints convert key for key."),
        "",
        "## License",
        "",
        f"The weights are the authors' release under their repository's license ({license_id}); the "
        "conversion adds nothing to them.",
    ]
    if citation:
        lines += ["", "## Citation", "", "```bibtex", citation.strip(), "```"]
    return "\n".join(lines) + "\n"


def _import_name(distribution: str) -> str:
    from ctxnets_shared.packages import discover_packages

    pkg = discover_packages().get(distribution)
    return pkg.import_name if pkg is not None else distribution.replace("-", "_")


def push_folder(folder: str | os.PathLike[str], repo_id: str, *, private: bool = False) -> str:
    """Create ``repo_id`` on the Hub if needed and upload ``folder``; returns the repository URL.

    Raises:
        ImportError: ``huggingface_hub`` is not installed (the message says how to install it).
    """
    try:
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError("--push-to-hub needs huggingface_hub: pip install huggingface_hub") from None
    api = HfApi()
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        commit_message="Add converted official weights (ctxnets convert)",
    )
    return f"https://huggingface.co/{repo_id}"
