"""Model shapes and the grounding model's attention."""

import pytest
import torch

from interfuse.coordinated.models import DeViSE, DualEncoder, GroundingModel, SceneCNN
from interfuse.coordinated.text import BagOfWords


def test_scene_cnn_shapes():
    torch.manual_seed(0)
    cnn = SceneCNN(channels=8, output_dim=5)
    x = torch.rand(3, 3, 32, 32)
    assert cnn.feature_map(x).shape == (3, 8, 8, 8)
    assert cnn(x).shape == (3, 5)


def test_devise_scores_every_label():
    labels = torch.randn(6, 10)
    model = DeViSE(labels, image_dim=16, channels=8)
    out = model(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 6)
    assert torch.allclose(model.labels.norm(dim=1), torch.ones(6))


def test_dual_encoder_embeddings_are_unit_norm_and_loss_is_finite():
    torch.manual_seed(0)
    model = DualEncoder(BagOfWords(10, dim=8, output_dim=12), text_dim=12, dim=6, channels=8)
    x, t = torch.rand(4, 3, 32, 32), torch.randint(1, 10, (4, 5))
    assert torch.allclose(model.embed_images(x).norm(dim=1), torch.ones(4))
    assert torch.isfinite(model.loss(x, t))


def test_grounding_attention_is_a_distribution_over_cells():
    torch.manual_seed(0)
    model = GroundingModel(12, dim=8, channels=8).eval()
    x, ids = torch.rand(3, 3, 32, 32), torch.randint(0, 12, (3, 5))
    att = model.attention(x, ids)
    assert att.shape == (3, 5, 64)
    assert torch.allclose(att.sum(-1), torch.ones(3, 5))
    assert model.scores(x, ids).shape == (3, 3)
    model.train()
    loss = model.loss(x, ids)
    loss.backward()
    assert model.words.weight.grad is not None


def test_grounding_local_path_sees_only_its_own_cell():
    # The local path's receptive field is exactly one 4×4 cell: changing every pixel outside
    # cell (2, 5) leaves that cell's local features unchanged, and changing one pixel inside
    # changes them (eval mode: BatchNorm uses running statistics).
    torch.manual_seed(0)
    model = GroundingModel(12, dim=8, channels=8).eval()
    x = torch.rand(1, 3, 32, 32)
    outside = torch.rand(1, 3, 32, 32)
    outside[..., 8:12, 20:24] = x[..., 8:12, 20:24]
    with torch.no_grad():
        for layer in model.local:
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.2, 0.2)
        base = model.local(x)[0, :, 2, 5]
        assert torch.equal(model.local(outside)[0, :, 2, 5], base)
        inside = x.clone()
        inside[0, 0, 9, 21] += 1.0
        assert not torch.allclose(model.local(inside)[0, :, 2, 5], base)
        assert model.local(x).shape[-2:] == (8, 8)


def _symmetric_kl(p: torch.Tensor, q: torch.Tensor) -> float:
    return float((p * (p / q).log()).sum() + (q * (q / p).log()).sum())


def test_equivariance_loss_is_zero_for_rotated_attention_and_matches_hand_computed_kl():
    torch.manual_seed(0)
    model = GroundingModel(4, dim=8, channels=8)
    sim = torch.randn(2, 64, 4)
    rotated = sim.unflatten(1, (8, 8)).flip(1, 2).flatten(1, 2)  # what a perfect model gives
    words = torch.tensor([[0.0, 1, 0, 1], [0, 0, 1, 0]])
    assert float(model.equivariance_loss(sim, rotated, words)) < 1e-6

    # Attention one cell above the object on the image *and* on the rotated image (a
    # translation-equivariant offset): rotated back, the second sits one cell *below*.
    grid = torch.full((8, 8), -1.0)
    grid[2, 4] = 1.0  # object at cell (3, 4); the map peaks at (2, 4)
    rotated_grid = torch.full((8, 8), -1.0)
    rotated_grid[3, 3] = 1.0  # object at (4, 3) after rotation; peak one cell above it
    sim = grid.reshape(1, 64, 1)
    loss = model.equivariance_loss(sim, rotated_grid.reshape(1, 64, 1), torch.ones(1, 1))
    a = torch.softmax(model.sharpness * grid.flatten(), 0)
    b = torch.softmax(model.sharpness * rotated_grid.flip(0, 1).flatten(), 0)
    assert torch.argmax(b) == 4 * 8 + 4  # rotated back: one cell below the object
    assert abs(float(loss) - 0.5 * _symmetric_kl(a, b)) < 1e-4
    assert float(loss) > 1.0


def test_grounding_loss_adds_the_weighted_equivariance_term():
    torch.manual_seed(0)
    model = GroundingModel(12, dim=8, channels=8).eval()  # eval: BatchNorm batch-independent
    x, ids = torch.rand(3, 3, 32, 32), torch.randint(0, 12, (3, 5))
    with torch.no_grad():
        plain = model.loss(x, ids)
        sim = model.vocabulary_similarity(x)
        sim_rot = model.vocabulary_similarity(x.flip(2, 3))
        counts = model.word_counts(ids, 12)
        term = model.equivariance_loss(sim, sim_rot, (counts > 0).float())
        assert float(term) > 0
        assert torch.allclose(model.loss(x, ids, equivariance=0.5), plain + 0.5 * term, atol=1e-5)
    with pytest.raises(ValueError, match="equivariance must be >= 0"):
        model.loss(x, ids, equivariance=-1.0)
