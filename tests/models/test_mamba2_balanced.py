"""Balanced cuts of Mamba-2 layers (``reduction.method: balanced``): the state projection bc_proj."""

import copy
import json

import pytest
import torch

from compressmamba import compat
from compressmamba.kernels import causal_conv1d_ref, ssd_scan_ref
from compressmamba.models import CompressMamba2ForCausalLM, build_mamba2, load_pretrained
from compressmamba.models.loading import export_transformers
from compressmamba.reduction.ssd import balanced_projections

from test_mamba2 import _tiny2


def _calibrate(m, ids):
    layers = m.ssm_layers()
    for layer in layers:
        layer.start_stats()
    with torch.no_grad():
        m(input_ids=ids)
    return [layer.pop_stats() for layer in layers]


def _ssd_out(m, ids, i=0):
    """Layer i's SSD output y (b, l, H, P) before D, gate and norm, by the reference kernels
    (float64 end to end: the gated norm runs in float32 and would hide round-off)."""
    with torch.no_grad():
        h = m.backbone.embeddings(ids)
        for layer in m.backbone.layers[:i]:
            h = layer(h)
        mixer = m.backbone.layers[i].mixer
        z, xBC, dt = mixer._split(mixer.in_proj(m.backbone.layers[i].norm(h)))
        xBC = causal_conv1d_ref(xBC.transpose(1, 2), mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias, "silu")
        x, B, C, delta = mixer._ssm_args(xBC.transpose(1, 2), dt)
        return ssd_scan_ref(x, delta, -torch.exp(mixer.A_log), B, C)


def _balanced_cut(m, stats, r, i=0):
    mixer = m.ssm_layers()[i]
    sigma = mixer.energy(stats[i], "balanced")
    return mixer.truncate_(torch.arange(r).expand(mixer.n_groups, r)), sigma


def test_keeping_every_balanced_coordinate_is_the_identity():
    m = _tiny2((13, 9)).double()
    ids = torch.randint(0, 41, (3, 21))
    stats = _calibrate(m, ids)
    y0, logits0 = _ssd_out(m, ids), m(input_ids=ids).logits
    mixer = m.ssm_layers()[0]
    sigma = mixer.energy(stats[0], "balanced")
    assert sigma.shape == (2, 13) and (sigma[:, :-1] >= sigma[:, 1:]).all() and (sigma > 0).all()
    basis = mixer._balancing
    assert mixer.truncate_(torch.arange(13).expand(2, 13)) == {} and mixer.bc_proj is None  # a no-op
    maps = mixer.project_states_(*balanced_projections(*basis, torch.arange(13).expand(2, 13)))
    assert maps == {"bc_proj.B": None, "bc_proj.C": None} and mixer.bc_proj.B.shape == (2, 13, 13)
    assert not torch.allclose(mixer.bc_proj.B, torch.eye(13, dtype=torch.float64))  # a real change of basis
    torch.testing.assert_close(_ssd_out(m, ids), y0, rtol=1e-9, atol=1e-11)
    torch.testing.assert_close(m(input_ids=ids).logits, logits0, rtol=1e-5, atol=1e-5)


def test_output_error_shrinks_with_r_and_vanishes_at_n():
    """Relative error of layer 0's SSD output on the calibration tokens after a balanced cut to
    r: non-increasing in r, zero at r = N; and a selection cut (largest `output` energy) to the
    same r is reported beside it for the record, not asserted."""
    m = _tiny2((13,)).double()
    ids = torch.randint(0, 41, (4, 40))
    stats = _calibrate(m, ids)
    y0 = _ssd_out(m, ids)
    errs = []
    for r in range(1, 14):
        mm = copy.deepcopy(m)
        mixer = mm.ssm_layers()[0]
        sigma = mixer.energy(stats[0], "balanced")
        keep = torch.arange(r).expand(2, r)
        if r == 13:  # truncate_ would be a no-op: apply the full projection
            mixer.project_states_(*balanced_projections(*mixer._balancing, keep))
        else:
            mixer.truncate_(keep)
            assert mm.state_sizes == [r] and mixer.bc_proj.B.shape == (2, r, 13)
        errs.append(((_ssd_out(mm, ids) - y0).norm() / y0.norm()).item())
    assert all(b <= a * (1 + 1e-9) for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 1e-10 and errs[0] > 1e-3
    tail = [sigma[:, r:].sum().item() / sigma.sum().item() for r in range(1, 14)]
    assert all((e > 1e-12) == (t > 1e-12) for e, t in zip(errs[:-1], tail[:-1]))


def test_projected_layer_decodes_saves_loads_and_refuses_plain_transformers_export(tmp_path):
    m = _tiny2((13, 9))
    ids = torch.randint(0, 41, (2, 30))
    stats = _calibrate(m, ids)
    _balanced_cut(m, stats, 5, i=0)
    assert m.state_sizes == [5, 9] and m.config.bc_proj_in == [13, None]
    sd = m.state_dict()
    assert "backbone.layers.0.mixer.bc_proj.B" in sd and "backbone.layers.1.mixer.bc_proj.B" not in sd
    with torch.no_grad():  # decode: the cache holds r = 5 states for layer 0, conv inputs of width 13
        full = m(input_ids=ids[:, :12]).logits
        cache = m.prepare_inputs_for_generation(ids[:, :12])[compat.CACHE_NAME]
        first = m(input_ids=ids[:, :7], cache=cache).logits
        steps = [m(input_ids=ids[:, t : t + 1], cache=cache).logits for t in range(7, 12)]
    assert cache.ssm[0].shape == (2, 4, 16, 5) and cache.conv[0].shape[1] == 64 + 2 * 2 * 13
    torch.testing.assert_close(torch.cat([first, *steps], 1), full, rtol=1e-4, atol=1e-4)
    m.save_pretrained(tmp_path / "ours")
    back = load_pretrained(tmp_path / "ours").eval()
    assert isinstance(back, CompressMamba2ForCausalLM) and back.state_sizes == [5, 9]
    assert back.config.bc_proj_in == [13, None]
    with torch.no_grad():
        torch.testing.assert_close(back(input_ids=ids).logits, m(input_ids=ids).logits, rtol=0, atol=0)
    # a training checkpoint rebuilds from the state sizes alone; loading reshapes layer 0
    rebuilt = build_mamba2(
        d_model=32, n_layers=2, state_sizes=[5, 9], vocab_size=41, head_dim=16, n_groups=2, chunk_size=8
    ).eval()
    rebuilt.load_state_dict(sd)
    assert rebuilt.config.bc_proj_in == [13, None]
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(input_ids=ids).logits, m(input_ids=ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="layer 0 carries a balanced state projection.*save_pretrained"):
        export_transformers(m, tmp_path / "hf")
    plain = _tiny2((13, 9))
    plain.save_pretrained(tmp_path / "plain")
    assert json.loads((tmp_path / "plain" / "config.json").read_text()).get("bc_proj_in") is None
    assert not any("bc_proj" in k for k in plain.state_dict())


def test_second_cut_composes_and_selection_on_a_projection_slices_it():
    m = _tiny2((13,)).double()
    ids = torch.randint(0, 41, (3, 30))
    _balanced_cut(m, _calibrate(m, ids), 8)
    mixer = m.ssm_layers()[0]
    y8 = _ssd_out(m, ids)
    # balanced again, keeping all 8 balanced coordinates of the projected layer: same outputs,
    # and the projection stays 8 × 13 (composed, not stacked)
    stats = _calibrate(m, ids)
    mixer.energy(stats[0], "balanced")
    mixer.project_states_(*balanced_projections(*mixer._balancing, torch.arange(8).expand(2, 8)))
    assert mixer.bc_proj.B.shape == (2, 8, 13) and m.config.bc_proj_in == [13]
    torch.testing.assert_close(_ssd_out(m, ids), y8, rtol=1e-8, atol=1e-10)
    maps, _ = _balanced_cut(m, _calibrate(m, ids), 6)
    assert maps == {"bc_proj.B": None, "bc_proj.C": None} and mixer.bc_proj.B.shape == (2, 6, 13)
    # selection (output energy) on the projected layer: equal to silencing the dropped rows
    e = mixer.energy(_calibrate(m, ids)[0], "output")
    assert e.shape == (2, 6)
    keep = torch.tensor([[0, 2, 5], [1, 3, 4]])
    zeroed = copy.deepcopy(m)
    with torch.no_grad():
        for g in range(2):
            drop = [k for k in range(6) if k not in keep[g].tolist()]
            zeroed.ssm_layers()[0].bc_proj.B[g, drop] = 0
    old = mixer.bc_proj.B.detach().clone()
    maps = mixer.truncate_(keep)
    assert m.state_sizes == [3] and mixer.bc_proj.B.shape == (2, 3, 13)
    torch.testing.assert_close(maps["bc_proj.B"](old), mixer.bc_proj.B.detach())
    torch.testing.assert_close(_ssd_out(m, ids), _ssd_out(zeroed, ids), rtol=1e-10, atol=1e-12)


def test_training_continues_after_a_balanced_cut():
    m = _tiny2((12, 12)).train()
    ids = torch.randint(0, 41, (4, 24))
    _balanced_cut(m, _calibrate(m, ids), 4, i=1)
    params = dict(m.named_parameters())
    assert "backbone.layers.1.mixer.bc_proj.B" in params
    from compressmamba.models.protocol import declared_parameter_names

    assert "backbone.layers.1.mixer.bc_proj.C" in declared_parameter_names(m, "no_weight_decay_params")
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        assert params["backbone.layers.1.mixer.bc_proj.B"].grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1


def test_recipe_key_bc_proj_in_builds_the_cut_models_architecture_from_the_start():
    # what the study's direct_same_arch arm trains: the parameter shapes of a balanced cut model
    cut = _tiny2((13, 9))
    _balanced_cut(cut, _calibrate(cut, torch.randint(0, 41, (2, 30))), 5, i=0)
    kw = dict(d_model=32, n_layers=2, head_dim=16, n_groups=2, chunk_size=8)
    fresh = build_mamba2(**kw, vocab_size=41, state_size=[5, 9], bc_proj_in=[13, None])
    assert fresh.state_sizes == [5, 9] and fresh.config.bc_proj_in == [13, None]
    shapes = {k: v.shape for k, v in fresh.state_dict().items()}
    assert shapes == {k: v.shape for k, v in cut.state_dict().items()}
    eye = torch.eye(5, 13).expand(2, 5, 13)  # the projection starts as the leading 5 of 13 states
    torch.testing.assert_close(fresh.ssm_layers()[0].bc_proj.B.detach(), eye)
    plain = build_mamba2(**kw, vocab_size=41, state_size=[5, 9])
    n = sum(p.numel() for p in fresh.parameters()) - sum(p.numel() for p in plain.parameters())
    wider = 2 * 2 * (13 - 5)  # B and C channels of 2 groups, 8 more each
    assert n == 32 * wider + (4 + 1) * wider + 2 * (2 * 5 * 13)  # in_proj rows, conv1d (+bias), bc_proj B, C
    with torch.no_grad():
        fresh(input_ids=torch.randint(0, 41, (2, 16)))
    with pytest.raises(ValueError, match="bc_proj_in"):
        build_mamba2(**kw, vocab_size=41, state_size=[5, 9], bc_proj_in=[4, None])  # narrower than the state
    # the recipe schema accepts the key (the builder's parameters are the model section's keys)
    from compressmamba.training.config import recipe_from_dict

    rec = recipe_from_dict(
        {
            "name": "t",
            "model": {"name": "mamba2", **kw, "state_size": [5, 9], "bc_proj_in": [13, None]},
            "data": {"name": "mqar", "vocab_size": 41, "n_pairs": 2, "seq_len": 16, "n_train": 8, "n_val": 4},
        }
    )
    assert rec.model["bc_proj_in"] == [13, None]
