"""Model shapes and the grounding model's attention."""

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
