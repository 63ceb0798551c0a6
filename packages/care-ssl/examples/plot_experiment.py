"""Plot the kNN accuracy and loss of the CARE and BYOL runs of digits_experiment.sh side by side.

uv run python packages/care-ssl/examples/plot_experiment.py care-digits docs/images/care-digits.png
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ctxnets_shared.training import read_metrics


def main(root: str, out_png: str) -> None:
    fig, (ax_knn, ax_c) = plt.subplots(1, 2, figsize=(9, 3.2))
    for mode in ("care", "byol"):
        rec = read_metrics(Path(root) / mode / "metrics.jsonl")
        knn = [(r["step"], r["knn_acc"]) for r in rec if r.get("knn_acc") is not None]
        ax_knn.plot(*zip(*knn), marker="o", label=mode)
        ax_c.plot([r["step"] for r in rec], [r["loss_c"] for r in rec], label=f"{mode}: L_c")
    ax_knn.set(title="kNN top-1 on held-out digits (%)", xlabel="step")
    ax_c.set(title="C-stream loss L_c", xlabel="step")
    for ax in (ax_knn, ax_c):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=100)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
