"""The pieces of sharded training that run in one process: the sharded checkpoint's layout,
atomic swap, content check and safe reading; the optimizer-state surgery of a sharded cut; the
Accelerate config's FSDP environment; activation checkpointing."""

import os
import pickle

import pytest
import torch
from accelerate import Accelerator

from compressmamba.cpu_launch import fsdp_environment, requested_cpu_ranks
from compressmamba.registry import build_model
from compressmamba.training import recipe_from_dict
from compressmamba.training import sharded_checkpoint as sc
from compressmamba.training.sharded import checkpoint_blocks, optimizer_states, place_optimizer_states, slice_states

TINY = {"name": "mamba2", "d_model": 16, "n_layers": 2, "state_size": 6, "head_dim": 8, "n_groups": 2}


def _trained(seed=0):
    torch.manual_seed(seed)
    model = build_model(TINY, vocab_size=64)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        ids = torch.randint(0, 64, (3, 11))
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return model, opt


def _meta(step):
    return {"step": step, "state_sizes": [6, 6], "rng": {}, "trainer": {}, "recipe": {}}


def test_sharded_checkpoint_round_trip_swap_and_content_check(tmp_path):
    acc = Accelerator(cpu=True)
    model, opt = _trained()
    ck = tmp_path / "checkpoints"
    sc.save_sharded(ck, model, opt, _meta(4), acc)
    sc.save_sharded(ck, model, opt, _meta(8), acc)
    sc.save_sharded(ck, model, opt, _meta(12), acc)
    assert os.readlink(ck / "last") == "step-00000012" and os.readlink(ck / "prev") == "step-00000008"
    assert sorted(p.name for p in ck.iterdir()) == ["last", "prev", "step-00000008", "step-00000012"]
    folder = sc.sharded_path(tmp_path)
    assert folder == ck / "last" and sc.load_meta(folder)["step"] == 12
    fresh, fresh_opt = _trained(seed=1)  # other weights and moments, to be overwritten
    sc.load_sharded(folder, fresh, fresh_opt)
    for (n, a), b in zip(model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), n
        sa, sb = opt.state[a], fresh_opt.state[b]
        assert all(torch.equal(sa[k], sb[k]) for k in ("step", "exp_avg", "exp_avg_sq")), n
    shard = next(folder.glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one byte changed after the write
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"corrupt or incomplete: files differ .*distcp.* previous checkpoint"):
        sc.load_meta(folder)


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_sharded_checkpoint_metadata_runs_no_pickled_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, opt = _trained()
    ck = tmp_path / "checkpoints"
    sc.save_sharded(ck, model, opt, _meta(2), Accelerator(cpu=True))
    (ck / "last" / ".metadata").write_bytes(pickle.dumps(_Boom()))
    with pytest.raises(ValueError, match=r"posix.system is not part of a checkpoint's metadata: refused"):
        sc.load_sharded(ck / "last", *_trained(seed=1))
    assert not (tmp_path / "pwned").exists()


def test_slice_states_keeps_slices_and_drops_by_the_cut_maps():
    g = torch.Generator().manual_seed(0)
    m = {"exp_avg": torch.randn(5, 3, generator=g), "exp_avg_sq": torch.rand(5, 3, generator=g)}
    m["step"] = torch.tensor(7.0)
    states = {"kept": dict(m), "sliced": dict(m), "rebased": dict(m)}
    rows = torch.tensor([0, 3])
    out, counts = slice_states(states, {"kept": (5, 3), "sliced": (5, 3), "rebased": (5, 3)},
                               {"sliced": lambda t: t[rows], "rebased": None})  # fmt: skip
    assert counts == {"kept": 1, "sliced": 1, "dropped": 1} and "rebased" not in out
    assert out["kept"] is states["kept"] and torch.equal(out["sliced"]["exp_avg"], m["exp_avg"][rows])
    assert torch.equal(out["sliced"]["exp_avg_sq"], m["exp_avg_sq"][rows]) and out["sliced"]["step"] == 7


def test_optimizer_states_move_by_name_onto_new_parameters():
    model, opt = _trained()
    states = optimizer_states(model, opt)
    twin, _ = _trained(seed=3)
    new_opt = torch.optim.AdamW(twin.parameters())
    place_optimizer_states(twin, new_opt, states)
    for (n, p), q in zip(model.named_parameters(), twin.parameters()):
        assert torch.equal(new_opt.state[q]["exp_avg"], opt.state[p]["exp_avg"]), n


def test_fsdp_environment_from_an_accelerate_config(tmp_path):
    cfg = {"distributed_type": "FSDP", "num_processes": 2, "fsdp_config": {
        "fsdp_version": 2, "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "fsdp_reshard_after_forward": True,
        "fsdp_transformer_layer_cls_to_wrap": "Block"}}  # fmt: skip
    assert fsdp_environment(cfg) == {
        "ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
        "FSDP_RESHARD_AFTER_FORWARD": "true", "FSDP_TRANSFORMER_CLS_TO_WRAP": "Block"}  # fmt: skip
    assert fsdp_environment({"distributed_type": "MULTI_CPU"}) == {}
    path = tmp_path / "c.yaml"
    path.write_text("distributed_type: FSDP\nnum_processes: 3\nfsdp_config: {fsdp_version: 2}\n")
    launcher = ["python", "accelerate", "launch", "--config_file", str(path), "-m", "compressmamba"]
    assert requested_cpu_ranks(launcher) == (3, {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2"})
    assert requested_cpu_ranks([*launcher[:3], "--num_processes", "2", *launcher[3:]])[0] == 2
    with pytest.raises(ValueError, match=r"--num_processes 'x': expected a whole number"):
        requested_cpu_ranks([*launcher[:3], "--num_processes", "x"])


def test_activation_checkpointing_recomputes_to_the_same_gradients():
    torch.manual_seed(0)
    plain = build_model(TINY, vocab_size=64)
    ckpt = build_model(TINY, vocab_size=64)
    ckpt.load_state_dict(plain.state_dict())
    assert checkpoint_blocks(ckpt) == 2
    ids = torch.randint(0, 64, (2, 13), generator=torch.Generator().manual_seed(1))
    for m in (plain, ckpt):
        m(input_ids=ids, labels=ids).loss.backward()
    for (n, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=n)
    with pytest.raises(ValueError, match=r"declares no blocks"):
        checkpoint_blocks(torch.nn.Linear(2, 2))
    recipe = {"model": TINY, "data": {"name": "text_lm"}, "train": {"activation_checkpointing": "yes"}}
    with pytest.raises(ValueError, match=r"train.activation_checkpointing = 'yes': expected bool"):
        recipe_from_dict(recipe)
