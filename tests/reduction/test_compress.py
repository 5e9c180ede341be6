import copy

import pytest
import torch

from compressmamba.compress import _load_any, compress_model
from compressmamba.models.mamba import build_mamba
from compressmamba.reduction import rank_for_energy, select_states


def test_post_hoc_compression_equals_zeroing_the_low_energy_states():
    """compress_model keeps, per layer, the top-r states by energy with r from the tau rule; the
    compressed model's logits equal the full model's with the other states' B rows zeroed."""
    torch.manual_seed(3)
    m = build_mamba(d_model=16, n_layers=2, state_sizes=[10, 7], vocab_size=50).eval()
    calib = [{"input_ids": torch.randint(0, 50, (2, 21))} for _ in range(2)]
    x = torch.randint(0, 50, (3, 17))
    with torch.no_grad():
        layers = m.ssm_layers()
        for layer in layers:
            layer.start_stats()
        for b in calib:
            m(**b)
        energies = [layer.energy(layer.pop_stats(), "hankel") for layer in layers]
        zeroed = copy.deepcopy(m)
        for layer, e in zip(zeroed.ssm_layers(), energies):
            r = rank_for_energy(torch.sort(e, descending=True).values, 0.3)
            keep = select_states(e, r, "largest") if r < 0.95 * e.numel() else torch.arange(e.numel())
            drop = [i for i in range(e.numel()) if i not in keep.tolist()]
            layer.x_proj.weight[layer.dt_rank + torch.tensor(drop, dtype=torch.long)] = 0
        y_zero = zeroed(input_ids=x).logits
        assert not torch.allclose(y_zero, m(input_ids=x).logits)
    report = compress_model(m, calib, tau=0.3, method="hankel")
    assert report.old_sizes == [10, 7] and report.new_sizes == m.state_sizes
    assert sum(report.new_sizes) < 17 and all(0 < k <= 1 for k in report.energy_kept)
    with torch.no_grad():
        torch.testing.assert_close(m(input_ids=x).logits, y_zero, rtol=1e-5, atol=1e-5)


def test_compress_rejects_another_architecture(tmp_path):
    from compressmamba.training.checkpoint import FORMAT

    ck = {"format": FORMAT, "recipe": {"model": {"name": "lru"}}, "model": {}, "state_sizes": [4]}
    ck.update(step=1, optimizer={}, rng={}, trainer={})
    (tmp_path / "checkpoints").mkdir()
    torch.save(ck, tmp_path / "checkpoints" / "last.pt")
    with pytest.raises(ValueError, match="checkpoint of a 'lru' model; compress expects a Mamba"):
        _load_any(str(tmp_path))
