"""The shared token loop against ``model.generate``, plus seeds, stop strings, eos and prompt rendering."""

from __future__ import annotations

import pytest

from prefalign.decode import GenOptions, Stream, render_prompts, run_decode, token_loop
from prefalign.decode.generate import encode_prompts, eos_ids, finish_texts, truncate_at_stop
from prefalign.testing import tiny_model, tiny_tokenizer

PROMPTS = ["What is the capital of France?", "cat", "Tell me a joke about a dog, please."]


@pytest.fixture(scope="module")
def model(tiny_tok):
    return tiny_model(tiny_tok).eval()


def generate_greedy(model, tok, prompts, max_new_tokens, system=None):
    """Reference: transformers' own greedy decoding on the same left-padded, rendered prompts."""
    ids, mask = encode_prompts(tok, prompts, GenOptions(), system=system)
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=max_new_tokens)
    return finish_texts(tok, out[:, ids.shape[1]:], eos_ids(tok, model), ())[0]


def test_greedy_loop_matches_model_generate_with_left_padding(model, tiny_tok):
    ours = run_decode("sample", model, tiny_tok, PROMPTS, temperature=0, max_new_tokens=16, batch_size=3)
    assert ours.completions == generate_greedy(model, tiny_tok, PROMPTS, 16)
    assert all(i["tokens"] <= 16 for i in ours.info)
    one_by_one = run_decode("sample", model, tiny_tok, PROMPTS, temperature=0, max_new_tokens=16, batch_size=1)
    assert one_by_one.completions == ours.completions  # padding does not change what a row sees


def test_sampling_is_deterministic_for_a_seed(model, tiny_tok):
    def run(seed):
        return run_decode("sample", model, tiny_tok, PROMPTS, temperature=1.0, top_p=0.9, max_new_tokens=12,
                          seed=seed).completions

    assert run(3) == run(3)
    assert run(3) != run(4)


def test_stop_string_ends_a_row_and_is_cut_off(model, tiny_tok):
    full = run_decode("sample", model, tiny_tok, PROMPTS[:1], temperature=0, max_new_tokens=20).completions[0]
    stop = full[6:8]
    cut = run_decode("sample", model, tiny_tok, PROMPTS[:1], temperature=0, max_new_tokens=20, stop=[stop])
    assert cut.completions[0] == full[: full.find(stop)]
    assert cut.info[0]["tokens"] < 20  # decoding stopped early, not just truncated afterwards
    assert truncate_at_stop("abc<END>def<X>", ["<X>", "<END>"]) == "abc"
    assert truncate_at_stop("abc", []) == "abc"


def test_logits_fn_hook_and_eos_end_rows(model, tiny_tok):
    eos = tiny_tok.eos_token_id
    ids, mask = encode_prompts(tiny_tok, PROMPTS, GenOptions())
    seen = []

    def force_eos_at_step_2(state):
        seen.append((state.step, tuple(state.generated.shape), len(state.logits)))
        scores = state.logits[0].clone()
        if state.step == 2:
            scores[:, eos] = 1e9
        return scores

    out = token_loop([Stream(model, ids, mask)], force_eos_at_step_2, GenOptions(max_new_tokens=10, temperature=0),
                     eos=[eos], pad=tiny_tok.pad_token_id)
    assert out.shape == (3, 3) and bool((out[:, 2] == eos).all())  # every row ended, so the loop stopped
    assert seen == [(0, (3, 0), 1), (1, (3, 1), 1), (2, (3, 2), 1)]
    texts, counts = finish_texts(tiny_tok, out, [eos], ())
    assert counts == [2, 2, 2] and texts == tiny_tok.batch_decode(out[:, :2], skip_special_tokens=True)


def test_render_prompts_chat_system_and_plain():
    tok = tiny_tokenizer()
    texts, templated = render_prompts(tok, ["Hi"], system="Be kind.")
    assert templated
    assert texts[0] == ("<|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                        "<|im_start|>assistant\n")
    assert render_prompts(tok, ["Hi"], chat=False) == (["Hi"], False)
    plain = tiny_tokenizer(chat_template=None)
    assert render_prompts(plain, ["Hi"], system="Be kind.") == (["Be kind.\n\nHi"], False)
    # A template that rejects the system role gets the system text folded into the user turn.
    strict = tiny_tokenizer()
    strict.chat_template = ("{% for m in messages %}{% if m['role'] == 'system' %}"
                            "{{ raise_exception('System role not supported') }}{% endif %}"
                            "[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}")
    assert render_prompts(strict, ["Hi"], system="Be kind.")[0] == ["[user] Be kind.\n\nHi\n"]


def test_model_folder_path_loads_model_and_tokenizer(tiny_model_dir, model, tiny_tok):
    by_path = run_decode("sample", str(tiny_model_dir), None, PROMPTS, temperature=0, max_new_tokens=8)
    by_object = run_decode("sample", model, tiny_tok, PROMPTS, temperature=0, max_new_tokens=8)
    assert by_path.completions == by_object.completions  # save_tiny uses the same seed as tiny_model
    assert by_path.rows(PROMPTS)[0]["prompt"] == PROMPTS[0]


def test_draw_follows_the_law_of_unnormalised_rows_and_skips_zero_mass():
    """``draw`` (inverse CDF, one uniform per row): empirical frequencies match each row's normalised law within 4
    standard errors, tokens of probability 0 (inside the row and at both ends) never come out, and a row whose
    mass is all on its last token always returns it."""
    import torch

    from prefalign.decode.generate import draw

    law = torch.tensor([[0.0, 0.5, 0.0, 1.5, 2.0, 0.0],  # sums to 4, zeros at both ends and inside
                        [0.0, 0.0, 0.0, 0.0, 0.0, 3.0],  # all mass on the last token
                        [0.1, 0.2, 0.3, 0.4, 0.0, 0.0]])
    n = 20000
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([draw(law, g) for _ in range(n)])  # [n, 3]
    for r in range(3):
        p = law[r] / law[r].sum()
        freq = torch.bincount(draws[:, r], minlength=6).double() / n
        se = (p * (1 - p) / n).sqrt()
        assert (freq[p == 0] == 0).all()
        assert ((freq - p).abs() <= 4 * se + 1e-12).all(), (r, freq, p)
    assert (draws[:, 1] == 5).all()
