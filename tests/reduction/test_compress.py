import copy

import pytest
import torch

from compressmamba.compress import compress_model
from compressmamba.inputs import load_any
from compressmamba.models.mamba import build_mamba


def _kept_states(before, after) -> list[int]:
    """Which states of ``before`` (a MambaMixer) survive in ``after``: the columns of A_log it
    kept, found by matching values, so the answer does not come from the cut's own bookkeeping."""
    old, new = before.A_log.detach(), after.A_log.detach()
    return [next(i for i in range(old.shape[1]) if torch.equal(old[:, i], col)) for col in new.T]


def test_post_hoc_compression_keeps_what_the_tau_rule_defines_and_equals_zeroing_the_rest():
    """compress_model against the rule's definition, checked on its result: per layer, the kept
    states are the highest-energy ones, they hold at least (1 − τ) of the energy, one fewer would
    not, and a layer whose rule keeps ≥ 95 % of its states is not cut (the gate). The cut model's
    logits equal the full model's with the dropped states' B rows zeroed (an exact selection)."""
    tau = 0.3
    torch.manual_seed(3)
    m = build_mamba(d_model=16, n_layers=4, state_sizes=[10, 7, 40, 2], vocab_size=50).eval()
    calib = [{"input_ids": torch.randint(0, 50, (2, 21))} for _ in range(2)]
    x = torch.randint(0, 50, (3, 17))
    full = copy.deepcopy(m)
    with torch.no_grad():
        for layer in full.ssm_layers():
            layer.start_stats()
        for b in calib:
            full(**b)
        energies = [layer.energy(layer.pop_stats(), "hankel") for layer in full.ssm_layers()]
    report = compress_model(m, calib, tau=tau, method="hankel")
    assert report.old_sizes == [10, 7, 40, 2] and report.new_sizes == m.state_sizes
    zeroed = copy.deepcopy(full)
    gated = 0
    for before, after, e, z in zip(full.ssm_layers(), m.ssm_layers(), energies, zeroed.ssm_layers()):
        e = e.tolist()
        kept = _kept_states(before, after)
        dropped = sorted(set(range(len(e))) - set(kept))
        ranked = sorted(e, reverse=True)
        fewest = next(r for r in range(1, len(e) + 1) if sum(ranked[:r]) >= (1 - tau) * sum(e))
        if fewest >= 0.95 * len(e):  # the gate: not worth a cut
            assert dropped == []
            gated += 1
            continue
        assert len(kept) == fewest
        assert min(e[i] for i in kept) >= max(e[i] for i in dropped)
        with torch.no_grad():
            z.x_proj.weight[z.dt_rank + torch.tensor(dropped)] = 0
    assert gated == 1 and all(a < b for a, b in zip(report.new_sizes[:3], report.old_sizes))  # both branches ran
    with torch.no_grad():
        y_zero = zeroed(input_ids=x).logits
        assert not torch.allclose(y_zero, full(input_ids=x).logits)
        torch.testing.assert_close(m(input_ids=x).logits, y_zero, rtol=1e-5, atol=1e-5)


def test_compress_rejects_another_architecture(tmp_path):
    from compressmamba.training.checkpoint import FORMAT

    ck = {"format": FORMAT, "recipe": {"model": {"name": "lru"}}, "model": {}, "state_sizes": [4]}
    ck.update(step=1, optimizer={}, rng={}, trainer={})
    (tmp_path / "checkpoints").mkdir()
    torch.save(ck, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="checkpoint of a 'lru' model; compress expects a language model"):
        load_any(str(tmp_path))
