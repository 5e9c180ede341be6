"""Issue 34: the streamed statistics (reduction/mamba.py MambaStats, reduction/ssd.py Mamba2Stats)
against the per-channel path they replaced (reduction/reference.py), inside real models of every
family: each layer feeds the same forward's inputs to both, and every energy method of the layer
and the states a cut keeps must agree."""

import pytest
import torch
import transformers

from compressmamba.models import build_mamba, build_mamba2, hybrid
from compressmamba.reduction.lti import rank_for_energy
from compressmamba.reduction.mamba import MambaStats
from compressmamba.reduction.reference import ReferenceMamba2Stats, ReferenceMambaStats
from compressmamba.reduction.ssd import Mamba2Stats

from hybrid_configs import tiny_config


class _Both:
    """Stands in for a layer's stats: every update goes to the streamed and the reference sums."""

    def __init__(self, new, ref):
        self.new, self.ref = new, ref

    def update(self, *args, **kwargs):
        self.new.update(*args, **kwargs)
        self.ref.update(*args, **kwargs)


def _perturbed(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(k in name for k in ("dt_bias", "A_log", "conv1d", "dt_proj")) or name.endswith(".D"):
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def _model(family):
    torch.manual_seed(0)
    if family == "mamba":
        return _perturbed(build_mamba(d_model=16, n_layers=2, state_sizes=[16, 7], vocab_size=41))
    if family == "mamba2":
        return _perturbed(
            build_mamba2(
                d_model=32, n_layers=2, state_sizes=[13, 9], vocab_size=41, head_dim=16, n_groups=2, chunk_size=8
            )
        )
    why = hybrid.available(family)
    if why:
        pytest.skip(why)
    fields = tiny_config(family, 41)
    fields.pop("model_type")
    h = hybrid.HYBRIDS[family]
    stock = getattr(transformers, h.causal_lm)(getattr(transformers, h.config)(**fields))
    return hybrid.from_stock(_perturbed(stock))


def _calibrate_both(model, ids):
    pairs = []
    for layer in model.ssm_layers():
        layer.start_stats()
        if isinstance(layer.stats, Mamba2Stats):
            ref = ReferenceMamba2Stats(layer.n_heads, layer.head_dim, layer.n_groups, layer.state_size)
            layer.stats = _Both(
                Mamba2Stats(layer.n_heads, layer.head_dim, layer.n_groups, layer.state_size, chunk=8), ref
            )
        else:
            assert isinstance(layer.stats, MambaStats)
            layer.stats = _Both(
                MambaStats(layer.d_inner, layer.state_size, chunk=8),
                ReferenceMambaStats(layer.d_inner, layer.state_size),
            )
    with torch.no_grad():
        for ids_batch in ids:
            model(input_ids=ids_batch)
    for layer in model.ssm_layers():
        both, layer.stats = layer.stats, None
        pairs.append((layer, both.new.as_dict(), both.ref.as_dict()))
    return pairs


@pytest.mark.parametrize("family", ["mamba", "mamba2", *sorted(hybrid.HYBRIDS)])
def test_streamed_energies_and_cuts_equal_the_reference_in_every_family(family):
    model = _model(family)
    gen = torch.Generator().manual_seed(3)
    ids = [torch.randint(1, 41, (2, 29), generator=gen) for _ in range(2)]  # two batches, l not a chunk multiple
    for layer, new, ref in _calibrate_both(model, ids):
        methods = ["hankel", "hankel_mean", "output"] + (["balanced"] if isinstance(layer, _mamba2_types()) else [])
        for method in methods:
            e_new = layer.energy(new, method)
            e_ref = layer.energy(ref, method)
            assert e_ref.abs().max() > 0 and e_new.shape == e_ref.shape
            torch.testing.assert_close(e_new, e_ref, rtol=1e-5, atol=1e-9 * float(e_ref.abs().max()))
            for tau in (0.02, 0.1, 0.3):  # the cut: sizes per group and the states kept
                for row_new, row_ref in zip(e_new.reshape(-1, e_new.shape[-1]), e_ref.reshape(-1, e_ref.shape[-1])):
                    s_new, s_ref = row_new.sort(descending=True), row_ref.sort(descending=True)
                    r = rank_for_energy(s_ref.values, tau)
                    assert rank_for_energy(s_new.values, tau) == r, (family, method, tau)
                    assert set(s_new.indices[:r].tolist()) == set(s_ref.indices[:r].tolist())


def _mamba2_types():
    from compressmamba.models.mamba2 import Mamba2Mixer

    return (Mamba2Mixer,)


def test_mamba2_output_energy_equals_the_reference_at_chunk_length_one_and_longer_than_l():
    """Chunk edge cases of the SSD form: one step per chunk (all through the carried state) and a
    chunk longer than the sequence (no carried state)."""
    model = _model("mamba2")
    ids = torch.randint(1, 41, (3, 11), generator=torch.Generator().manual_seed(5))
    layer = model.ssm_layers()[0]
    for chunk in (1, 64):
        layer.stats = _Both(
            Mamba2Stats(layer.n_heads, layer.head_dim, layer.n_groups, layer.state_size, chunk=chunk),
            ReferenceMamba2Stats(layer.n_heads, layer.head_dim, layer.n_groups, layer.state_size),
        )
        with torch.no_grad():
            model(input_ids=ids)
        both, layer.stats = layer.stats, None
        new, ref = both.new.as_dict(), both.ref.as_dict()
        torch.testing.assert_close(layer.energy(new, "output"), layer.energy(ref, "output"), rtol=1e-5, atol=0)
        torch.testing.assert_close(new["out2"], ref["out2"].unflatten(0, (layer.n_heads, -1)).sum(1), rtol=1e-5, atol=0)
    assert new.keys() == ref.keys()  # the same statistics, key by key
