import pytest
import torch

from eunets_monai.networks.blocks.mhex import MHEXPlus


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_mhex_equations_against_per_pixel_loops(spatial_dims):
    torch.manual_seed(0)
    head = MHEXPlus(spatial_dims, in_channels=3, out_channels=2, init="default")  # a random W1, not the identity
    shape = (4, 5) if spatial_dims == 2 else (3, 4, 2)
    x = torch.randn(1, 3, *shape)
    gated, hidden, pred = head(x)
    w1 = head.conv1.weight.reshape(3, 3)
    w2 = head.conv2.weight.reshape(2, 3)
    for idx in torch.cartesian_prod(*[torch.arange(s) for s in shape]):
        pos = (0, slice(None), *idx.tolist())
        a = x[pos]
        y = [max(0.0, sum(w1[j, i].item() * a[i].item() for i in range(3))) for j in range(3)]
        expected_gated = [1 / (1 + torch.exp(torch.tensor(-v)).item()) * v for v in y]
        expected_pred = [sum(w2[c, j].item() * y[j] for j in range(3)) for c in range(2)]
        torch.testing.assert_close(hidden[pos], torch.tensor(y), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(gated[pos], torch.tensor(expected_gated), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(pred[pos], torch.tensor(expected_pred), rtol=1e-5, atol=1e-6)


def test_no_biases_and_equivalent_kernel():
    head = MHEXPlus(2, in_channels=4, out_channels=3, init="default")
    assert head.conv1.bias is None and head.conv2.bias is None
    w1, w2 = head.conv1.weight[:, :, 0, 0], head.conv2.weight[:, :, 0, 0]
    expected = torch.zeros(3, 4)
    for c in range(3):
        for i in range(4):
            expected[c, i] = sum(w2[c, j] * w1[j, i] for j in range(4))
    torch.testing.assert_close(head.equivalent_kernel(), expected.reshape(3, 4, 1, 1))


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_identity_init_passes_features_on(spatial_dims):
    head = MHEXPlus(spatial_dims, in_channels=5, out_channels=2)
    x = torch.randn(2, 5, *([6] * spatial_dims))
    gated, hidden, pred = head(x)
    # W1 = I: Y = ReLU(X), and the prediction is Conv2 on it, so W_equiv = W2 at the start
    torch.testing.assert_close(hidden, torch.relu(x))
    torch.testing.assert_close(gated, torch.sigmoid(torch.relu(x)) * torch.relu(x))
    torch.testing.assert_close(head.equivalent_kernel(), head.conv2.weight)
    assert pred.abs().sum() > 0


def test_identity_drift_is_the_relative_frobenius_distance_to_the_identity():
    head = MHEXPlus(3, in_channels=4, out_channels=2)
    assert head.identity_drift() == 0.0
    with torch.no_grad():
        head.conv1.weight[0, 1] += 0.6  # one off-diagonal entry
        head.conv1.weight[2, 2] -= 0.8  # one diagonal entry
    # direct: sqrt(0.6^2 + 0.8^2) / sqrt(4) = 1 / 2
    assert head.identity_drift() == pytest.approx(0.5)


def test_reset_parameters_and_bad_init():
    torch.manual_seed(0)
    head = MHEXPlus(2, in_channels=4, out_channels=3)
    eye = torch.eye(4).reshape(4, 4, 1, 1)
    assert torch.equal(head.conv1.weight, eye)
    head.reset_parameters("default")
    assert not torch.allclose(head.conv1.weight, eye)
    head.reset_parameters()
    assert torch.equal(head.conv1.weight, eye)
    with pytest.raises(ValueError, match="init must be one of"):
        MHEXPlus(2, 4, 3, init="zeros")
