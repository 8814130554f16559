"""The fixed structure of one Monarch layer: its sizes and the slot table the kernels index through.

With b = nblocks, p_in = ceil(K/b), p_out = ceil(N/b) and r = min(p_in, p_out) (``MonarchLinear``):

    h[k*r + t]  = sum_i W1[k, t, i] x[k*p_in + i]          first block-diagonal product
    y[s*b + l]  = sum_j W2[l, s, j] h[j*b + l]             second one, after the stride permutation

The kernels never materialise h in its natural order. The first kernel writes the intermediate as
``b`` planes ``H[l, m, j] = h[m, j*b + l]`` -- exactly the (M, r) operand each block of the second
product streams with unit stride. Which plane and column a first-product output lands in depends
only on (k, t), so the first kernel reads that from a small table: for block k, "slot" u holds the W1
row t = ``row[k, u]`` and sends its result to ``H[plane[k, u], :, col[k, u]]``. The slots of a block
are ordered by (plane, t), so each program's stores come in contiguous runs of about r/b columns
(exactly r/b when b divides r) instead of one element every b columns.

The same table serves the input gradient (a gather of dH through the slots) and dW1 (scattered back
to W1 rows through ``row``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MonarchSizes(NamedTuple):
    """The integers one Monarch call needs: a tuple, so torch.compile treats it as a constant."""

    in_features: int  # K
    out_features: int  # N
    nblocks: int  # b
    p_in: int
    p_out: int
    mid: int  # r


def monarch_sizes(in_features: int, out_features: int, nblocks: int) -> MonarchSizes:
    p_in = -(-in_features // nblocks)
    p_out = -(-out_features // nblocks)
    return MonarchSizes(in_features, out_features, nblocks, p_in, p_out, min(p_in, p_out))


def slot_table(sizes: MonarchSizes) -> torch.Tensor:
    """(3, b, r) int32 on CPU: W1 row, plane and column of every slot (see the module docstring)."""
    b, r = sizes.nblocks, sizes.mid
    t = torch.arange(r, dtype=torch.int64).expand(b, r)
    mid = torch.arange(b, dtype=torch.int64).view(b, 1) * r + t  # middle index k*r + t
    plane, col = mid % b, mid // b
    order = torch.argsort(plane * r + t, dim=1)  # by plane, then by t: stores in contiguous runs
    table = torch.stack([t.gather(1, order), plane.gather(1, order), col.gather(1, order)])
    return table.to(torch.int32).contiguous()
