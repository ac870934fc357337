"""Shared fixtures: tiny tokenizer/model built on the spot (no downloads)."""

from __future__ import annotations

import os

import pytest

from tests.deprecation_guard import no_deprecation_from_prefalign  # noqa: F401  (autouse: issue 17)

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: one thread per worker (and its subprocesses), so two
    os.environ["OMP_NUM_THREADS"] = "1"  # workers share 2 cores instead of oversubscribing them ×2

    import torch

    torch.set_num_threads(1)


@pytest.fixture
def one_thread():
    """One torch thread for the test: tiny matmuls gain nothing from threads, and on a busy CPU waiting for a second
    one dominates (``pytestmark = pytest.mark.usefixtures("one_thread")``)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_tok():
    from prefalign.testing import tiny_tokenizer

    return tiny_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A model folder (tiny Llama + ChatML tokenizer) shared by the session; do not modify it."""
    from prefalign.testing import save_tiny

    return save_tiny(tmp_path_factory.mktemp("tiny_model"))
