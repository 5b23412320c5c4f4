import pytest
import torch

# One intra-op thread: seeded results do not depend on the machine's core count, and test
# processes sharing a small machine do not oversubscribe it.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Each test starts from the same global torch seed."""
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def motif_demo_run(tmp_path_factory):
    """The demo's motif experiment, trained once per test session: (task, results, run folder)."""
    from interfuse.data.synthetic import make_motif_data
    from interfuse.data.task import synthetic_task
    from interfuse.train import TrainConfig
    from interfuse.train.runner import fit

    task = synthetic_task(make_motif_data([0.9, 0.6, 0.3, 0.0], n=6000, seed=0), seed=0)
    out = tmp_path_factory.mktemp("motif-demo")
    return task, fit(task, TrainConfig(seed=0), out, progress=False), out


@pytest.fixture(scope="session")
def xor_demo_run(tmp_path_factory):
    """The demo's XOR experiment, trained once per test session: (task, results, run folder)."""
    from interfuse.data.synthetic import make_xor_data
    from interfuse.data.task import synthetic_task
    from interfuse.train import TrainConfig
    from interfuse.train.runner import fit

    task = synthetic_task(make_xor_data(3, pair=(0, 1), n=4000, seed=0), seed=0, name="xor")
    out = tmp_path_factory.mktemp("xor-demo")
    return task, fit(task, TrainConfig(seed=0), out, progress=False), out
