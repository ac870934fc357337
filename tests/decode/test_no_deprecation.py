"""Generation through prefalign's token loop raises no deprecation warning (issue 17: transformers 5 renamed
``past_key_values`` to ``cache``), and the suite's guards catch one that prefalign's calls would cause."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch

from prefalign.decode import GenOptions, Stream, run_decode
from prefalign.decode.generate import cache_kwarg, encode_prompts
from prefalign.testing import tiny_model

PROMPTS = ["What is the capital of France?", "cat"]


@pytest.fixture(scope="module")
def model(tiny_tok):
    return tiny_model(tiny_tok).eval()


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _deprecations(fn):
    """(fn's result, deprecation warnings it raised, transformers log lines about deprecation) — every one,
    not once per location (``always``) and not once per process (transformers' ``warning_once`` cache)."""
    once = getattr(logging.Logger, "warning_once", None)
    if hasattr(once, "cache_clear"):
        once.cache_clear()
    records, tf = _Records(), logging.getLogger("transformers")
    tf.addHandler(records)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = fn()
    finally:
        tf.removeHandler(records)
    found = [f"{w.category.__name__}: {w.message}" for w in caught
             if issubclass(w.category, (DeprecationWarning, FutureWarning))]
    logged = [m for m in records.messages if "deprecat" in m.lower()]
    return result, found, logged


def test_sampling_and_greedy_decoding_raise_no_deprecation_warning(model, tiny_tok):
    def decode():
        greedy = run_decode("sample", model, tiny_tok, PROMPTS, temperature=0, max_new_tokens=6)
        sampled = run_decode("sample", model, tiny_tok, PROMPTS, temperature=1.0, top_p=0.9, max_new_tokens=6)
        return greedy, sampled

    (greedy, sampled), found, logged = _deprecations(decode)
    assert found == [] and logged == []
    assert len(greedy.completions) == len(sampled.completions) == 2


def test_two_stream_methods_and_a_peft_model_raise_no_deprecation_warning(model, tiny_tok):
    from prefalign.model import add_lora

    ref = tiny_model(tiny_tok, seed=1).eval()
    peft_model, found_lora, logged_lora = _deprecations(
        lambda: add_lora(tiny_model(tiny_tok, seed=2), 4, 8, 0.0, "all-linear").eval())
    assert found_lora == [] and logged_lora == []  # PEFT's own is_gradient_checkpointing read is silenced

    def decode():
        run_decode("dera", model, tiny_tok, PROMPTS, ref_model=ref, hparams={"lam": 2.0}, max_new_tokens=5)
        run_decode("dera", peft_model, tiny_tok, PROMPTS, hparams={"lam": 0.5}, max_new_tokens=5)  # adapter off = ref
        run_decode("linear_alignment", model, tiny_tok, PROMPTS, hparams={"principle": "Be kind."}, max_new_tokens=5)

    _, found, logged = _deprecations(decode)
    assert found == [] and logged == []


def test_stream_uses_one_dynamic_cache_filled_in_place(model, tiny_tok):
    from transformers import DynamicCache

    ids, mask = encode_prompts(tiny_tok, PROMPTS, GenOptions())
    stream = Stream(model, ids, mask)
    cache = stream.cache
    assert isinstance(cache, DynamicCache) and cache_kwarg(model) in ("cache", "past_key_values")
    stream.prefill()
    stream.step(torch.tensor([5, 6]))
    assert stream.cache is cache and cache.get_seq_length() == ids.shape[1] + 1


def test_guard_attributes_a_library_deprecation_to_the_prefalign_call(model, tiny_tok, no_deprecation_from_prefalign):
    """The autouse guard: a deprecated kwarg passed from a prefalign frame is ours; the same call from a test is not."""
    import transformers

    if int(transformers.__version__.split(".")[0]) < 5:
        pytest.skip("past_key_values is deprecated from transformers 5")
    found = no_deprecation_from_prefalign
    ids = torch.tensor([[5, 6, 7]])
    ns = {"__name__": "prefalign._guard_probe"}  # a function that lives in a prefalign module
    exec("def call(m, ids):\n    return m(input_ids=ids, past_key_values=None)\n", ns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the guard sees warnings even when a filter hides them
        model(input_ids=ids, past_key_values=None)
        assert found == []  # the call came from this test
        ns["call"](model, ids)
    assert found and "prefalign" in found[0] and "past_key_values" in found[0]
    found.clear()  # so the guard does not fail this test


def test_a_deprecation_warning_issued_by_a_prefalign_module_is_an_error(no_deprecation_from_prefalign):
    """pyproject's filterwarnings: ``error::FutureWarning:prefalign(\\.|$)`` (and DeprecationWarning)."""
    ns = {"__name__": "prefalign._filter_probe"}
    exec("import warnings\ndef old():\n    warnings.warn('old() is deprecated', FutureWarning, stacklevel=1)\n", ns)
    with pytest.raises(FutureWarning, match="deprecated"):
        ns["old"]()
    no_deprecation_from_prefalign.clear()
