import torch
from torch import nn

from compressmamba.models.lru import build_lru
from compressmamba.training.config import OptimConfig
from compressmamba.training.optim import build_optimizer, carry_optimizer_state, snapshot_state


def test_groups_from_tags():
    m = build_lru(d_model=4, n_layers=1, state_size=5, d_input=1, n_classes=2)
    opt = build_optimizer(m, OptimConfig(lr=0.1, weight_decay=0.05, ssm_lr_factor=0.25))
    by = {g["name"]: g for g in opt.param_groups}
    ssm_ids = {id(p) for p in by["ssm"]["params"]}
    lru = m.blocks[0].lru
    assert {id(lru.nu_log), id(lru.B_re), id(lru.gamma_log)} <= ssm_ids and id(lru.C_re) not in ssm_ids
    assert by["ssm"]["lr"] == 0.1 * 0.25 and by["ssm"]["weight_decay"] == 0.0
    assert id(m.encoder.weight) in {id(p) for p in by["decay"]["params"]} and by["decay"]["weight_decay"] == 0.05
    assert all(p.dim() < 2 for p in by["no_decay"]["params"])


class Sliceable(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(3, 6))
        self.v = nn.Parameter(torch.randn(6))
        self.u = nn.Parameter(torch.randn(2))


def test_carry_keeps_slices_and_drops():
    m = Sliceable()
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    for _ in range(3):
        (m.w.sum() ** 2 + (m.v**3).sum() + m.u.prod()).backward()
        opt.step()
        opt.zero_grad()
    before = snapshot_state(m, opt)
    old_w_state = {k: v.clone() for k, v in opt.state[m.w].items()}
    old_u_state = {k: v.clone() for k, v in opt.state[m.u].items()}
    keep = torch.tensor([0, 2, 5])
    m.w = nn.Parameter(m.w.detach()[:, keep])
    m.v = nn.Parameter(m.v.detach()[keep])
    new = torch.optim.AdamW(m.parameters(), lr=0.1)
    counts = carry_optimizer_state(m, new, before, {"w": lambda t: t[:, keep], "v": None})
    assert counts == {"kept": 1, "sliced": 1, "dropped": 1}
    torch.testing.assert_close(new.state[m.w]["exp_avg"], old_w_state["exp_avg"][:, keep])
    torch.testing.assert_close(new.state[m.w]["exp_avg_sq"], old_w_state["exp_avg_sq"][:, keep])
    assert new.state[m.w]["step"] == old_w_state["step"]
    assert m.v not in new.state
    assert all(torch.equal(new.state[m.u][k], old_u_state[k]) for k in ("exp_avg", "exp_avg_sq", "step"))
    # and it steps
    (m.w.sum() + m.v.sum() + m.u.sum()).backward()
    new.step()
