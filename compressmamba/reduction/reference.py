"""The per-channel float64 statistics the streamed ones replaced (issue 34), kept as their
reference: tests check that reduction/mamba.py's ``MambaStats`` and reduction/ssd.py's
``Mamba2Stats`` produce the same sums, and eval/bench_cut.py times the two against each other.

Not for use in training: this path treats a Mamba-2 layer as a Mamba-1 layer of H·p channels and
builds (b, d, n, l) float64 tensors (the ``in2`` and ``dB`` einsums) and (b, T, d, n) states per
chunk, which at a 130M model's shape costs minutes and gigabytes per calibration batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kernels.selective_scan.cpu import scan_forward
from .mamba import MambaStats


class ReferenceMambaStats(MambaStats):
    """The old ``MambaStats.update``: float64 einsums over per-channel (b, d, n, l) views of B and
    C, and a per-channel scan of (b, T, d, n) states. Same sums and keys as ``MambaStats``."""

    @torch.no_grad()
    def update(self, u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        g = self._check(u, delta, A, B, C)
        b, d, l = u.shape
        dev = u.device
        grouped = B.dim() == 4
        s = {k: v.to(dev) for k, v in self.sums.items()}
        if grouped and s["c"].dim() == 1:
            s["c"], s["c2"] = s["c"].new_zeros(g, self.n), s["c2"].new_zeros(g, self.n)
        Bc = B.repeat_interleave(d // g, dim=1) if grouped else B[:, None]
        Cc = C.repeat_interleave(d // g, dim=1) if grouped else C[:, None]
        du = delta * u
        s["count"] += b * l
        s["in2"] += torch.einsum("bdl,bdnl->dn", du.double() ** 2, (Bc.double() ** 2).expand(b, d, -1, -1))
        s["dB"] += torch.einsum("bdl,bdnl->dn", delta.double(), Bc.double().expand(b, d, -1, -1))
        s["c2"] += (C.double() ** 2).sum((0, -1))
        s["c"] += C.double().sum((0, -1))
        h0 = torch.zeros(b, d, self.n, dtype=torch.float32, device=dev)
        At = A.float()
        for t0 in range(0, l, self.chunk):
            sl = slice(t0, min(l, t0 + self.chunk))
            dt = delta[..., sl].float().transpose(1, 2)  # (b, T, d)
            a = torch.exp(dt.unsqueeze(-1) * At)  # (b, T, d, n)
            s["decay"] += a.double().sum((0, 1))
            x = du[..., sl].float().transpose(1, 2).unsqueeze(-1) * Bc[..., sl].float().permute(0, 3, 1, 2)
            h = scan_forward(a, x) + torch.cumprod(a, dim=1) * h0[:, None]
            s["out2"] += ((h * Cc[..., sl].float().permute(0, 3, 1, 2)) ** 2).double().sum((0, 1))
            h0 = h[:, -1]
        self.sums = s


class ReferenceMamba2Stats:
    """The old ``Mamba2Stats``: Mamba-1's reference sums over the H·p channels (``out2`` per
    channel, (H·p, N)) and the group Gramian sums in float64 einsums."""

    def __init__(self, heads: int, head_dim: int, groups: int, n: int):
        self.heads, self.head_dim, self.groups, self.n = heads, head_dim, groups, n
        self.modes = ReferenceMambaStats(heads * head_dim, n, chunk=256)
        z = lambda *s: torch.zeros(*s, dtype=torch.float64)
        self.gram = {"ssd_in": z(heads, n, n), "ssd_out": z(groups, n, n), "ssd_decay": z(heads)}

    @torch.no_grad()
    def update(self, x: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
        h, p, g, n = self.heads, self.head_dim, self.groups, self.n
        u = x.flatten(-2).transpose(1, 2).float()
        d = delta.float().repeat_interleave(p, dim=-1).transpose(1, 2)
        A_c = A.float().repeat_interleave(p)[:, None].expand(-1, n)
        self.modes.update(u=u, delta=d, A=A_c, B=B.permute(0, 2, 3, 1).float(), C=C.permute(0, 2, 3, 1).float())
        s = self.gram
        w = delta.double() ** 2 * x.double().pow(2).sum(-1)  # (b, l, H)
        Bh = B.double().repeat_interleave(h // g, dim=2)  # (b, l, H, N): head h's group
        s["ssd_in"] += torch.einsum("blh,blhn,blhm->hnm", w, Bh, Bh)
        s["ssd_out"] += torch.einsum("blgn,blgm->gnm", C.double(), C.double())
        s["ssd_decay"] += torch.exp(delta.double() * A.double()).sum((0, 1))

    def as_dict(self) -> dict[str, Tensor]:
        out = self.modes.as_dict()
        out.update({k: v.detach().cpu().clone() for k, v in self.gram.items()})
        return out
