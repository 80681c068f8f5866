"""Figures for the report, returned as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def to_png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def training_curves(records: list[dict]) -> bytes:
    steps = [r["step"] for r in records]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, key, title in zip(axes, ("loss", "logit_scale", "pairs_per_s"), ("loss", "logit scale", "pairs / s")):
        ax.plot(steps, [r.get(key, np.nan) for r in records], color="#2b6cb0")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    return to_png(fig)


def bar_chart(labels: list[str], values: list[float], ylabel: str, title: str) -> bytes:
    """One bar per label, values in [0, 1]."""
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(labels, values, color="#2b6cb0")
    ax.set_ylim(0, 1)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return to_png(fig)


def confusion_matrix(confusion: np.ndarray, class_names: list[str], title: str) -> bytes:
    k = len(class_names)
    size = max(5.0, 0.18 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    rows = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=90, fontsize=6 if k > 20 else 8)
    ax.set_yticks(range(k), class_names, fontsize=6 if k > 20 else 8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    return to_png(fig)


def retrieval_grid(queries: list[str], images: np.ndarray, top: list[list[int]], truth: list[int],
                   title: str = "text -> image retrieval (true image framed in green)") -> bytes:
    """Each row: a text query and its top-k images; the true image is framed in green.

    images: [N, H, W, 3] uint8 display images; top: per query the indices of the retrieved images.
    """
    k = len(top[0])
    fig, axes = plt.subplots(len(queries), k + 1, figsize=(1.5 * (k + 1) + 2.5, 1.6 * len(queries)),
                             gridspec_kw={"width_ratios": [3] + [1] * k})
    for row, (query, hits, true_index) in enumerate(zip(queries, top, truth)):
        axes[row, 0].text(0, 0.5, query, wrap=True, fontsize=8, va="center")
        axes[row, 0].axis("off")
        for col, index in enumerate(hits, start=1):
            ax = axes[row, col]
            ax.imshow(images[index])
            ax.set_xticks([])
            ax.set_yticks([])
            colour = "#2f855a" if index == true_index else "#cbd5e0"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(3 if index == true_index else 1)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def display_images(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] any dtype -> [N, H, W, 3] uint8 for display (first three channels, min-max scaled)."""
    x = images.astype(np.float32)
    if x.shape[1] == 1:
        x = np.repeat(x, 3, axis=1)
    x = x[:, :3]
    if images.dtype != np.uint8:
        lo = x.min(axis=(0, 2, 3), keepdims=True)
        hi = x.max(axis=(0, 2, 3), keepdims=True)
        x = (x - lo) / np.maximum(hi - lo, 1e-6) * 255
    return x.clip(0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


def channel_subset_accuracy(by_size: dict[str, float], subsets: dict[str, float], title: str) -> bytes:
    """Accuracy against the number of channels kept: one dot per subset, a line through the size means."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sizes = [name.count("+") + 1 for name in subsets]
    jitter = np.random.default_rng(0).uniform(-0.12, 0.12, len(sizes))
    ax.scatter(np.array(sizes) + jitter, list(subsets.values()), s=12, alpha=0.45, color="#718096", label="subset")
    ax.plot([int(k) for k in by_size], list(by_size.values()), "o-", color="#2b6cb0", label="mean per size")
    ax.set_xlabel("channels present")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_xticks([int(k) for k in by_size])
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    return to_png(fig)
