import pytest
import torch

from compressmamba.models.common import masked_mean, per_layer_sizes


def test_masked_mean_matches_a_loop_over_rows():
    g = torch.Generator().manual_seed(3)
    h = torch.randn(4, 9, 5, generator=g, dtype=torch.float64)
    lengths = torch.tensor([9, 1, 4, 0])
    out = masked_mean(h, lengths)
    for i, n in enumerate(lengths.tolist()):
        want = h[i, :n].mean(0) if n else torch.zeros(5, dtype=torch.float64)
        torch.testing.assert_close(out[i], want)
    torch.testing.assert_close(masked_mean(h), h.mean(1))


@pytest.mark.parametrize(
    "state_size,state_sizes,n_layers,want",
    [(8, None, 3, [8, 8, 8]), ([4, 5], None, 2, [4, 5]), (8, [3, 2, 1], 3, [3, 2, 1])],
)
def test_per_layer_sizes(state_size, state_sizes, n_layers, want):
    assert per_layer_sizes(state_size, state_sizes, n_layers) == want
