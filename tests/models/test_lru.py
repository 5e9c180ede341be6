import torch

from compressmamba.models.lru import LRULayer, _diag_scan_fft, build_lru
from compressmamba.models.protocol import declared_parameter_names
from compressmamba.reduction import select_states


def _loop_scan(x, lam):
    h = torch.zeros_like(x[:, 0])
    out = []
    for t in range(x.shape[1]):
        h = lam * h + x[:, t]
        out.append(h)
    return torch.stack(out, 1)


def test_fft_scan_matches_loop_float64():
    g = torch.Generator().manual_seed(1)
    x = torch.complex(
        torch.randn(2, 37, 5, generator=g, dtype=torch.float64), torch.randn(2, 37, 5, generator=g, dtype=torch.float64)
    )
    lam = torch.polar(
        torch.rand(5, generator=g, dtype=torch.float64) * 0.99, torch.rand(5, generator=g, dtype=torch.float64) * 6
    )
    torch.testing.assert_close(_diag_scan_fft(x, lam), _loop_scan(x, lam), rtol=1e-10, atol=1e-10)


def _layer64(n=12, h=5):
    torch.manual_seed(2)
    return LRULayer(h, n, r_min=0.3, r_max=0.95).double()


def test_truncate_keep_all_is_identity():
    layer = _layer64()
    u = torch.randn(2, 40, 5, dtype=torch.float64)
    y0 = layer(u)
    maps = layer.truncate_(torch.arange(layer.state_size))
    assert maps == {}
    torch.testing.assert_close(layer(u), y0)


def test_truncated_layer_error_within_hsv_bound():
    layer = _layer64(n=16)
    sigma = layer.energy(None, "hankel")
    r = 6
    u = torch.randn(1, 300, 5, dtype=torch.float64)
    y0 = layer(u)
    maps = layer.truncate_(select_states(sigma, r, "largest"))
    assert layer.state_size == r and set(maps) >= {"nu_log", "B_re", "C_im"} and all(v is None for v in maps.values())
    y1 = layer(u)
    # ‖y − ŷ‖₂ ≤ ‖G − Ĝ‖_∞ ‖u‖₂ ≤ 2 Σ_{i>r} σ_i ‖u‖₂ (the real part only shrinks the error)
    err = (y0 - y1).norm().item()
    bound = 2 * sigma[r:].sum().item() * u.norm().item()
    assert 0 < err <= bound


def test_model_trains_after_cut_and_reports_sizes():
    model = build_lru(d_model=8, n_layers=2, state_size=10, d_input=1, n_classes=3, dropout=0.0)
    x, y = torch.randn(4, 30, 1), torch.randint(0, 3, (4,))
    out = model(inputs=x, labels=y)
    assert out.logits.shape == (4, 3) and torch.isfinite(out.loss)
    layer = model.ssm_layers()[1]
    layer.truncate_(select_states(layer.energy(None, "hankel"), 4))
    assert model.state_sizes == [10, 4]
    ssm = declared_parameter_names(model, "ssm_params")
    assert {f"blocks.1.lru.{k}" for k in ("nu_log", "B_re")} <= ssm and "blocks.1.lru.C_re" not in ssm
    out = model(inputs=x, labels=y)
    out.loss.backward()
    assert torch.isfinite(layer.B_re.grad).all() and layer.B_re.grad.abs().sum() > 0
    rebuilt = build_lru(d_model=8, n_layers=2, state_size=10, d_input=1, n_classes=3, state_sizes=model.state_sizes)
    rebuilt.load_state_dict(model.state_dict())


def test_token_and_pair_heads():
    """The pair head reads both token sequences up to their lengths and nothing past them, and its
    loss is the cross-entropy of its logits."""
    torch.manual_seed(0)
    model = build_lru(d_model=8, n_layers=1, state_size=4, vocab_size=20, n_classes=2, pair=True).eval()
    a, b = torch.randint(1, 20, (3, 11)), torch.randint(1, 20, (3, 9))
    la, lb, labels = torch.tensor([11, 5, 2]), torch.tensor([9, 9, 1]), torch.tensor([0, 1, 1])

    def logits(x, y):
        return model(inputs=x, inputs2=y, lengths=la, lengths2=lb).logits

    with torch.no_grad():
        out = model(inputs=a, inputs2=b, lengths=la, lengths2=lb, labels=labels)
        assert out.logits.shape == (3, 2)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        a_pad, b_pad = a.clone(), b.clone()  # new tokens past each length: padding, never read
        for i in range(3):
            a_pad[i, la[i] :] = (a[i, la[i] :] % 19) + 1
            b_pad[i, lb[i] :] = (b[i, lb[i] :] % 19) + 1
        torch.testing.assert_close(logits(a_pad, b_pad), out.logits)
        for x, y in ((a, b.roll(1, dims=0)), (a.roll(1, dims=0), b)):  # each input is read, in every row
            assert ((logits(x, y) - out.logits).abs().sum(-1) > 1e-6).all()
