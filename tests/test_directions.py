"""Principal directions of a z1 -> z0 map, against a linear map whose singular vectors are known."""
import pytest
import torch

from lsgm_core.directions import principal_directions


def known_map(shape, active, gains, seed=0):
    """z0 = A z1 + 1 on the active dimensions (identity elsewhere), A = Q diag(gains) R^T with random
    orthogonal Q, R: A's right singular vectors are R's columns."""
    gen = torch.Generator().manual_seed(seed)
    mask = torch.as_tensor(active) > 0
    d = int(mask.sum()) * shape[1] * shape[2]
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    r, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.as_tensor(gains, dtype=torch.float64)) @ r.T

    def flow(z1):
        z0 = z1.clone()
        z0[:, mask] = (z1[:, mask].reshape(len(z1), -1).double() @ a.T + 1).float().reshape(z0[:, mask].shape)
        return z0
    return flow, r, mask


def test_recovers_the_right_singular_vectors_and_gains_of_a_linear_map():
    shape, active = (3, 2, 2), [1, 0, 1]  # 8 active dimensions, channel 1 passes through
    gains = [5.0, 3.0, 2.0, 1.0, 0.5, 0.4, 0.3, 0.2]
    flow, r, mask = known_map(shape, active, gains)
    d = principal_directions(flow, shape, 3, 400, active=torch.tensor(active), batch_size=64)
    assert d.vectors.shape == (3, *shape) and torch.allclose(d.gains, torch.tensor(gains[:3]), rtol=1e-4)
    assert (d.vectors[:, ~mask] == 0).all()
    got = d.vectors[:, mask].reshape(3, -1).double()
    assert torch.allclose(got.norm(dim=1), torch.ones(3, dtype=torch.float64), atol=1e-5)
    # each equals its singular vector up to sign, and the sign is the one with the largest entry positive
    assert torch.allclose((got * r.T[:3]).sum(1).abs(), torch.ones(3, dtype=torch.float64), atol=1e-4)
    assert (got.gather(1, got.abs().argmax(1, keepdim=True)) > 0).all()


def test_the_same_seed_gives_the_same_directions():
    flow, _, _ = known_map((1, 2, 2), [1], [2.0, 1.0, 1.0, 1.0])  # a tie below the top: only v1 is determined
    a, b = (principal_directions(flow, (1, 2, 2), 1, 50, seed=s) for s in (0, 0))
    assert torch.equal(a.vectors, b.vectors)


@pytest.mark.parametrize("k,num,message", [(0, 10, "k must be from 1 to the 4"), (5, 10, "k must be from 1 to the 4"),
                                           (3, 3, "num must exceed k = 3")])
def test_refuses_bad_k_and_num(k, num, message):
    with pytest.raises(ValueError, match=message):
        principal_directions(lambda z: z, (1, 2, 2), k, num)
