"""Knowledge distillation and Hankel-nuclear-norm regularisation (the paper's baselines)."""

import json
from pathlib import Path

import pytest
import torch

from compressmamba.models.lru import LRULayer
from compressmamba.reduction import hankel_singular_values
from compressmamba.training import Trainer, recipe_from_dict, tracking
from compressmamba.training.baselines import (
    DistillationLoss,
    distillation_kl,
    hankel_nuclear_norm,
    lru_lti_differentiable,
)
from compressmamba.training.config import parse_baseline
from compressmamba.training.metrics import read_metrics


def _kl_reference(s, t, T):
    s, t = s.double() / T, t.double() / T
    pt = torch.softmax(t, -1)
    return (pt * (torch.log(pt) - torch.log_softmax(s, -1))).sum(-1)


def test_distillation_kl_matches_float64_reference():
    s, t = torch.randn(7, 5) * 3, torch.randn(7, 5) * 3
    got = distillation_kl(s, t, 2.0)
    torch.testing.assert_close(got.double(), _kl_reference(s, t, 2.0).mean(), rtol=1e-5, atol=1e-7)
    s3, t3 = torch.randn(3, 11, 9), torch.randn(3, 11, 9)
    mask = torch.rand(3, 11) > 0.4
    want = _kl_reference(s3, t3, 1.5)[mask].mean()
    torch.testing.assert_close(distillation_kl(s3, t3, 1.5, mask).double(), want, rtol=1e-5, atol=1e-7)
    assert distillation_kl(s, s, 2.0).abs() < 1e-6


class _Out:
    def __init__(self, logits, loss):
        self.logits, self.loss = logits, loss


class _Fixed(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, **_):
        return _Out(self.logits, None)


def test_distillation_total_loss_is_alpha_t2_kl_plus_one_minus_alpha_ce():
    s, t, y = torch.randn(6, 4), torch.randn(6, 4), torch.randint(0, 4, (6,))
    ce = torch.nn.functional.cross_entropy(s, y)
    hook = DistillationLoss(_Fixed(t), temperature=2.0, alpha=0.5)
    total = ce + hook(None, {"inputs": torch.zeros(6, 3), "labels": y}, _Out(s, ce))
    want = 0.5 * 4.0 * _kl_reference(s, t, 2.0).mean() + 0.5 * ce.double()
    torch.testing.assert_close(total.double(), want, rtol=1e-5, atol=1e-7)


def test_hankel_nuclear_norm_matches_reference_and_has_gradients():
    layer = LRULayer(7, 13)
    with torch.no_grad():
        layer.C_re.normal_()
        layer.B_im.normal_()
    lam, B, C = lru_lti_differentiable(layer)
    got = hankel_nuclear_norm(lam, B, C)
    want = hankel_singular_values(*layer.lti()).sum()
    torch.testing.assert_close(got.detach(), want, rtol=1e-6, atol=0)
    got.backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0 for p in (layer.nu_log, layer.B_re, layer.C_im))

    theta = torch.rand(4, dtype=torch.float64) * 6

    def f(nu_log, B_re, C_re):
        lam = torch.exp(torch.complex(-torch.exp(nu_log), theta))
        return hankel_nuclear_norm(lam, torch.complex(B_re, B_re.flip(0)), torch.complex(C_re, -C_re))

    small = (
        torch.randn(4, dtype=torch.float64) - 2.0,
        torch.randn(4, 3, dtype=torch.float64),
        torch.randn(2, 4, dtype=torch.float64),
    )
    small = tuple(x.requires_grad_() for x in small)
    assert torch.autograd.gradcheck(f, small, eps=1e-6, atol=1e-5, rtol=1e-4)


def test_parse_baseline_rejects_bad_input():
    with pytest.raises(ValueError, match="baseline.name = 'kd'"):
        parse_baseline({"name": "kd"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['temp'\].*valid keys"):
        parse_baseline({"name": "distill", "teacher": "x", "temp": 2})
    with pytest.raises(ValueError, match="baseline.alpha = 1.5"):
        parse_baseline({"name": "distill", "teacher": "x", "alpha": 1.5})
    with pytest.raises(ValueError, match="baseline.tau"):
        parse_baseline({"name": "hnn", "tau": 1.0})
    assert parse_baseline({"name": "hnn", "lam": "1e-3"}).lam == 1e-3


def _recipe(toy_recipe, tmp_path, name, **kw):
    r = dict(toy_recipe, name=name, out_dir=str(tmp_path / name))
    r["train"] = dict(r["train"], steps=6, eval_every=3)
    r.update(kw)
    return r


def test_distill_from_teacher_run_records_teacher_cost(toy_recipe, tmp_path):
    teacher = _recipe(toy_recipe, tmp_path, "teacher", reduction={"mode": "none"})
    Trainer(recipe_from_dict(teacher)).fit()
    t_time = json.loads((tmp_path / "teacher" / "summary.json").read_text())["train_time_s"]
    student = _recipe(
        toy_recipe,
        tmp_path,
        "student",
        reduction={"mode": "none"},
        model=dict(toy_recipe["model"], state_size=3),
        baseline={"name": "distill", "teacher": str(tmp_path / "teacher")},
    )
    tr = Trainer(recipe_from_dict(student))
    assert isinstance(tr.extra_loss, DistillationLoss)
    tr.fit()
    s = json.loads((tmp_path / "student" / "summary.json").read_text())
    assert s["teacher_train_time_s"] == pytest.approx(t_time) and s["final_state_sizes"] == [3, 3]
    # a new folder: the student's own holds its finished run, which a new run may not replace
    bad = dict(student, out_dir=str(tmp_path / "bad"), baseline={"name": "distill", "teacher": str(tmp_path / "nope")})
    with pytest.raises(FileNotFoundError, match="summary.json"):
        Trainer(recipe_from_dict(bad))


def test_hnn_regularises_then_truncates_post_hoc(toy_recipe, tmp_path):
    r = _recipe(
        toy_recipe, tmp_path, "hnn", reduction={"mode": "none"}, baseline={"name": "hnn", "lam": 0.1, "tau": 0.3}
    )
    tr = Trainer(recipe_from_dict(r))
    tr.fit()
    run = Path(r["out_dir"])
    s = json.loads((run / "summary.json").read_text())
    assert s["initial_state_sizes"] == [12, 12]
    assert all(n < 12 for n in s["final_state_sizes"]) and s["n_cuts"] == 1 and s["posthoc_tau"] == 0.3
    cuts = [m for m in read_metrics(run / "metrics.jsonl") if m["kind"] == "cut"]
    assert len(cuts) == 1 and cuts[0]["posthoc"] and cuts[0]["new_sizes"] == s["final_state_sizes"]
    assert tr.model.state_sizes == s["final_state_sizes"]


def test_post_hoc_cut_reaches_the_trackers(toy_recipe, tmp_path, monkeypatch):
    """Defect: the post-hoc cut wrote its metrics.jsonl row but never reached the trackers
    (train.report_to), which saw every training cut."""
    sent = []
    monkeypatch.setattr(tracking, "log_row", lambda accelerator, row: sent.append(row))
    r = _recipe(
        toy_recipe, tmp_path, "hnn", reduction={"mode": "none"}, baseline={"name": "hnn", "lam": 0.1, "tau": 0.3}
    )
    Trainer(recipe_from_dict(r)).fit()
    cuts = [row for row in sent if row["kind"] == "cut"]
    assert len(cuts) == 1 and cuts[0]["posthoc"] and cuts[0]["step"] == 6
