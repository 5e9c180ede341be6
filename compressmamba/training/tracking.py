"""Experiment trackers through Accelerate (``train.report_to``): TensorBoard, W&B, MLflow,
Comet, Trackio, ... Every metrics.jsonl row becomes scalars; cut plots become images where the
tracker takes images."""

from __future__ import annotations

from pathlib import Path


def tracker_names(report_to) -> list[str]:
    """``train.report_to`` (None, one name or a list) → a list of names."""
    if report_to is None:
        return []
    if isinstance(report_to, str):
        return [report_to]
    return list(report_to)


_PIP_NAMES = {"comet_ml": "comet-ml"}


def check_trackers(names: list[str]) -> None:
    """Every tracker ``train.report_to`` names must be installed: Accelerate only warns and the
    run then logs nowhere but metrics.jsonl. ValueError naming the key, the tracker and the fix."""
    import accelerate.utils

    for name in names:
        available = getattr(accelerate.utils, f"is_{name}_available", None)  # public; None: a name it lacks
        if available is not None and not available():
            raise ValueError(
                f"train.report_to = {name!r}: the {name} package is not installed, so nothing would be logged "
                f"there; pip install {_PIP_NAMES.get(name, name)}, or drop {name} from train.report_to"
            )


def flat_config(d: dict, prefix: str = "") -> dict:
    """A nested recipe as ``{"optim.lr": 0.001, ...}`` with values trackers accept (bool, int,
    float, str; lists and None as text)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_config(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v == v  # drops NaN


def scalars(row: dict) -> dict:
    """The scalars of one metrics.jsonl row, named by kind: ``train/loss``, ``val/accuracy``,
    ``state_size/layer0``, ``cut/layer0/new`` ..."""
    kind = row.get("kind")
    out = {}
    if kind == "train":
        for k in ("loss", "lr", "samples_per_s", "tokens_per_s"):
            if _num(row.get(k)):
                out[f"train/{k}"] = row[k]
    elif kind == "eval":
        split = row.get("split", "val")
        for k in ("loss", "accuracy", "perplexity"):
            if _num(row.get(k)):
                out[f"{split}/{k}"] = row[k]
    elif kind == "cut":
        for i, (o, n) in enumerate(zip(row["old_sizes"], row["new_sizes"])):
            out[f"cut/layer{i}/old"], out[f"cut/layer{i}/new"] = o, n
        for i, e in enumerate(row.get("energy_kept") or []):
            if _num(e):
                out[f"cut/layer{i}/energy_kept"] = e
        out["cut/seconds"] = row.get("seconds", 0.0)
    elif kind == "rollback":
        out["pragmatic/rollback_score"] = row.get("val_score")
    sizes = row.get("state_sizes") or row.get("new_sizes") or row.get("to_sizes")
    if sizes:
        out.update({f"state_size/layer{i}": n for i, n in enumerate(sizes)})
        out["state_size/total"] = sum(sizes)
    return {k: v for k, v in out.items() if _num(v)}


def log_row(accelerator, row: dict) -> None:
    """Send one metrics row to every tracker (main process only; a no-op without trackers)."""
    if accelerator.trackers:
        values = scalars(row)
        if values:
            accelerator.log(values, step=int(row["step"]))


def log_image(accelerator, name: str, png: str | Path, step: int) -> None:
    """Send a PNG to the trackers that take images (TensorBoard, W&B, Aim, ClearML, SwanLab)."""
    if not accelerator.trackers:
        return
    import matplotlib.image as mpimg

    image = mpimg.imread(str(png))[..., :3]  # (H, W, 3) float in [0, 1]
    for tracker in accelerator.trackers:
        if not hasattr(tracker, "log_images"):
            continue
        if tracker.name == "tensorboard":
            tracker.log_images({name: image[None]}, step=step, dataformats="NHWC")
        else:
            tracker.log_images({name: [image]}, step=step)


def finish(accelerator) -> None:
    """Close the trackers (flushing their files). Not ``accelerator.end_training()``: that also
    destroys the process group, which a caller may still need (several seeds in one launch)."""
    for tracker in accelerator.trackers:
        tracker.finish()
    accelerator.trackers = []
