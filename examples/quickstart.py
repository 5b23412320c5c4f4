"""Build a fusion model over three modalities of random tensors, train it briefly, print relevance.

The target depends on `text` strongly, on `audio` weakly, on the product `audio × text`, and not
at all on `video`: the relevance table should show that ranking.
"""

import torch
from torch import nn

from interfuse import MultimodalModel

torch.manual_seed(0)
dims = {"video": 8, "audio": 6, "text": 10}
encoders = {
    m: nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 16)) for m, d in dims.items()
}
model = MultimodalModel(
    encoders, interactions="pairs", rank=4, num_outputs=1, p=2.0, encoder_dims={m: 16 for m in dims}
)

n = 4096
x = {m: torch.randn(n, d) for m, d in dims.items()}
y = 2.0 * x["text"][:, :1] + 0.5 * x["audio"][:, :1] + 1.5 * x["audio"][:, 1:2] * x["text"][:, 1:2]
y = y + 0.1 * torch.randn(n, 1)

optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
for _epoch in range(30):
    for batch in torch.randperm(n).split(256):
        out = model({m: v[batch] for m, v in x.items()})
        loss = nn.functional.mse_loss(out.prediction, y[batch]) + 1e-2 * model.regularizer()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
print(f"final training loss: {loss.item():.4f}")
print(model.relevance())
