"""SEA (#28) and ONPO (#27) trained end to end by ``method: online`` (the hooks of ``online/hooks.py``).

SEA: the duel the engine picks is ``thompson_duel`` on the ensemble's scores of the rollout's last-token hidden
states with the rollout's seed; the oracle labels it; the ensemble learns; the policy trains on the pairs; the whole
SEA state round-trips. ONPO: the rewards become in-group Bradley–Terry win rates, the reference slot holds the
secondary iterate (a model copy, or with LoRA the adapter weights), which equals ½(θ̂ + θ) exactly after each
iteration. kill -9 + --resume is bit-identical for both (slow)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from prefalign.online.algos import base
from prefalign.online.algos.onpo import bt_win_rates, round_robin
from prefalign.online.algos.sea import duel_seed, masked_scores
from prefalign.online.hooks import RolloutPlus
from prefalign.online.sea import label_duels, thompson_duel
from prefalign.train.config import save
from prefalign.train.loop import build
from tests.online.test_online_train import _cfg, _cli, _prompts, _weights

SPREAD = "tests.online.test_sea_onpo_train:spread"


def spread(prompts, completions, **columns):
    """A reward that seldom ties (the stub's vowel share is often 0 for the tiny model, and ties label no duel)."""
    return [(sum((i + 1) * ord(ch) for i, ch in enumerate(c)) % 1009) / 1009 for c in completions]


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _changed(model_dir, out) -> bool:
    before, after = load_file(str(model_dir / "model.safetensors")), _weights(out)
    return any(not torch.equal(before[k], after[k]) for k in before if k in after)


# -- SEA ----------------------------------------------------------------------------------------------------------
def _sea_rollout(seed=0, P=5, G=4, H=6, nan=True):
    g = torch.Generator().manual_seed(seed)
    rewards = torch.rand(P * G, generator=g)
    rewards[1] = rewards[0]  # a possible tie
    if nan:
        rewards[G + 2] = float("nan")
    return RolloutPlus(rewards=rewards, group=torch.arange(P).repeat_interleave(G),
                       mask=torch.ones(P * G, 3, dtype=torch.bool), old_logp=torch.zeros(P * G, 3),
                       features=torch.randn(P * G, H, generator=g), index=3, seed=11, rank=0, world=1)


def test_sea_duel_is_thompson_on_the_ensemble_scores_and_its_state_round_trips():
    algo = base.get("sea", num_ensemble=6, rm_hidden_dim=8, rm_batch_size=4)
    algo.init(6, seed=11)
    ro = _sea_rollout()
    P, G = 5, 4
    phi, rew = ro.features.reshape(P, G, -1), ro.rewards.reshape(P, G)
    with torch.no_grad():
        scores = algo.learner.model(phi)  # [E, P, G] before this rollout's learning
    before = algo.learner.model.flat_params().clone()
    out = algo.advantages(ro)
    first, second = thompson_duel(masked_scores(scores, rew), torch.Generator().manual_seed(duel_seed(11, 3, 0)))
    assert torch.equal(out["duel_first"], first) and torch.equal(out["duel_second"], second)
    assert 2 not in (int(first[1]), int(second[1]))  # the unjudged candidate (reward NaN) is never in a duel
    won, lost, ok = label_duels(rew, first, second)
    assert torch.equal(out["pair_valid"], ok)
    for p in range(P):
        if ok[p]:  # the oracle: the higher reward is chosen
            c, r = int(out["pair_chosen"][p]), int(out["pair_rejected"][p])
            assert c // G == p and r // G == p and ro.rewards[c] > ro.rewards[r]
            assert {c % G, r % G} == {int(first[p]), int(second[p])}
        else:
            a, b = rew[p, first[p]], rew[p, second[p]]
            assert first[p] == second[p] or torch.isnan(a) or torch.isnan(b) or a == b
    assert algo.learner.num_queries == int(ok.sum()) and not torch.equal(algo.learner.model.flat_params(), before)
    assert {"sea/ensemble_loss", "sea/duel_fraction", "sea/clash_fraction", "sea/queries"} <= set(out)
    # the whole state (ensemble, Adam moments, replay buffer, N) round-trips: the next rollout is bit-identical
    other = base.get("sea", num_ensemble=6, rm_hidden_dim=8, rm_batch_size=4)
    other.init(6, seed=11)
    other.load_state_tensors(algo.state_tensors())
    other.load_state(algo.state())
    nxt = _sea_rollout(seed=1)
    nxt.index = 4
    a, b = algo.advantages(nxt), other.advantages(nxt)
    for k in ("duel_first", "duel_second", "pair_valid"):
        assert torch.equal(a[k], b[k])
    assert a["sea/ensemble_loss"] == b["sea/ensemble_loss"]
    assert torch.equal(algo.learner.model.flat_params(), other.learner.model.flat_params())


def test_label_duels_skip_ties_clashes_and_unjudged():
    rew = torch.tensor([[0.1, 0.9, 0.5], [0.3, 0.3, 0.0], [float("nan"), 1.0, 0.0], [0.2, 0.7, 0.1]])
    first, second = torch.tensor([0, 0, 0, 1]), torch.tensor([1, 1, 1, 1])
    won, lost, ok = label_duels(rew, first, second)
    assert ok.tolist() == [True, False, False, False] and (int(won[0]), int(lost[0])) == (1, 0)
    with pytest.raises(ValueError, match="duel"):
        base.get("sea", duel="greedy")


def test_sea_trains_end_to_end(tiny_model_dir, tmp_path):
    """Two rollouts through the engine: the features are the policy's final hidden state at the position that
    predicts each completion's last token (checked against a plain forward of one sequence at a time), the duel is
    Thompson sampling on the ensemble's scores of them with the rollout's seed, the policy trains on the labelled
    duels with DPO, and the ensemble's metrics are logged."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", objective="sea", beta=0.1,
               reward=SPREAD, max_steps=2, memory_probe=False, objective_args={"num_ensemble": 8, "rm_hidden_dim": 16})
    eng = build(cfg, log=lambda *a: None)
    method, algo, G = eng.method, eng.method.algo, cfg.num_generations
    duels, checked = [], []
    score_rollout, advantages = method._score_rollout, algo.advantages

    def spy_score(buf, examples):
        feats = score_rollout(buf, examples)
        if not checked:  # rollout 0: one sequence at a time through the model's body
            with torch.no_grad():
                for n in range(len(feats)):
                    prompt = method.examples[int(buf["prompt_index"][n // G])].prompt_ids
                    L = int(buf["mask"][n].sum())
                    ids = torch.tensor([prompt + buf["ids"][n, :L].tolist()])
                    h = method.model.model(input_ids=ids).last_hidden_state[0, len(prompt) + L - 2]
                    torch.testing.assert_close(feats[n], h, rtol=1e-4, atol=1e-5)
            checked.append(len(feats))
        return feats

    def spy_advantages(ro):
        with torch.no_grad():
            scores = algo.learner.model(ro.features.reshape(-1, G, ro.features.shape[-1]))
        expect = thompson_duel(masked_scores(scores, ro.rewards.reshape(-1, G)),
                               torch.Generator().manual_seed(duel_seed(cfg.seed, ro.index, ro.rank)))
        out = advantages(ro)
        duels.append(torch.equal(out["duel_first"], expect[0]) and torch.equal(out["duel_second"], expect[1]))
        return out

    method._score_rollout, algo.advantages = spy_score, spy_advantages
    out = eng.train()
    assert duels == [True, True] and checked == [cfg.batch_size * G]
    assert _changed(tiny_model_dir, out)
    rows = _rows(out)
    assert all("sea/ensemble_loss" in r and "sea/duel_fraction" in r and "logps/chosen" in r for r in rows)
    assert any("sea/agreement" in r for r in rows)
    assert rows[-1]["sea/queries"] == algo.learner.num_queries >= 2 and rows[-1]["sea/duel_fraction"] > 0
    assert not torch.equal(algo.learner.model.flat_params(), algo.learner.model.anchor)  # the ensemble learned
    assert json.loads((out / "run_complete.json").read_text())["algorithm"] == "sea"


# -- ONPO ---------------------------------------------------------------------------------------------------------
def test_bt_win_rates_are_round_robin_of_the_bt_judge():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(3 * 4, generator=g, dtype=torch.float64)
    group = torch.arange(3).repeat_interleave(4)
    pref = torch.sigmoid(r.view(3, 4, 1) - r.view(3, 1, 4))  # [P, G, G]
    torch.testing.assert_close(bt_win_rates(r, group), round_robin(pref), rtol=0, atol=1e-15)
    r[1], r[8:11] = float("nan"), float("nan")  # group 2 keeps one judged member: no estimate for it
    s = bt_win_rates(r, group)
    assert torch.isnan(s[1]) and torch.isnan(s[8:]).all()
    torch.testing.assert_close(s[0], (torch.sigmoid(r[0] - r[2]) + torch.sigmoid(r[0] - r[3])) / 2)


def _onpo_spies(eng):
    """Record, around every secondary sync, the exact expectation ½(θ̂ + θ) and what the sync left."""
    algo, ref, cfg = eng.method.algo, eng.method.reference, eng.cfg
    log = {"syncs": [], "rollouts": [], "judged": [], "h_zero": []}
    after, advantages, judge, ref_logps = algo.after_update, algo.advantages, algo.judge, ref.logps

    def spy_after(m, step):
        sec, pol = m.reference.tensors()
        before = [s.detach().clone() for s in sec]
        expect = [s * 0.5 + p.detach() * 0.5 for s, p in zip(before, pol)]
        after(m, step)
        log["syncs"].append((step, all(torch.equal(s, b) for s, b in zip(sec, before)),
                             all(torch.equal(s, e) for s, e in zip(sec, expect))))

    def spy_advantages(ro):
        log["rollouts"].append((ro.index, ro.rewards.clone()))
        return advantages(ro)

    def spy_ref(batch, policy=None, token_level=False, features=(), score=None, temperature=None):
        """Is log π̂ of the rollout's samples the policy's own, bit for bit (rollout: the advantages calls so far)?"""
        out = ref_logps(batch, policy, token_level=token_level, features=features, score=score,
                        temperature=temperature)
        pol = eng.score(batch, chunk_size=cfg.log_prob_chunk_size, temperature=cfg.temperature)
        log["h_zero"].append((len(log["rollouts"]), torch.equal(out.token_logps, pol.token_logps)))
        return out

    def spy_judge(rewards, group):
        out = judge(rewards, group)
        log["judged"].append((rewards.clone(), group.clone(), out.clone()))
        return out

    algo.after_update, algo.advantages, algo.judge, ref.logps = spy_after, spy_advantages, spy_judge, spy_ref
    return log


def _h_zero(log, rollout: int) -> bool | None:
    """Whether log π̂ = log π bit for bit on every chunk of that rollout's scoring (None: none was scored)."""
    oks = [ok for r, ok in log["h_zero"] if r == rollout]
    return all(oks) if oks else None


@pytest.mark.parametrize("mu", [1, 2])
def test_onpo_trains_with_win_rates_and_the_secondary_iterate(tiny_model_dir, tmp_path, mu):
    """The rewards the loss sees are the BT win rates of the rollout's rewards; the reference is a second model that
    starts at the policy (log π − log π̂ = 0 bit for bit at the first rollout) and, after the last of the μ updates of
    each rollout, equals ½(θ̂ + θ) exactly (untouched after the others)."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", objective="onpo", max_steps=2,
               num_iterations=mu, memory_probe=False)
    eng = build(cfg, log=lambda *a: None)
    log = _onpo_spies(eng)
    out = eng.train()
    method = eng.method
    assert method.reference.kind == "secondary-copy"
    assert [s[0] for s in log["syncs"]] == [0, 1]
    for step, unchanged, synced in log["syncs"]:
        assert synced if (step + 1) % mu == 0 else unchanged
    assert [r[0] for r in log["rollouts"]] == list(range(2 // mu)) and len(log["judged"]) == 2 // mu
    assert _h_zero(log, 0) is True  # π̂_1 = π_1: log π − log π̂ = 0 bit for bit
    if mu == 1:
        assert _h_zero(log, 1) is False  # π̂_2 = ½(θ̂_1 + θ_2) lags the policy
    for (_, scores), (rewards, group, judged) in zip(log["rollouts"], log["judged"]):
        assert torch.equal(scores, judged)  # the loss's rewards are the judge's win rates ...
        torch.testing.assert_close(judged, bt_win_rates(rewards.double(), group).float())  # ... of the rewards
        assert not torch.equal(judged, rewards)
    assert torch.equal(method.buffer["scores"], log["judged"][-1][2])
    assert _changed(tiny_model_dir, out)
    rows = _rows(out)
    for key in ("onpo/win_rate_std", "onpo/win_rate_min", "onpo/win_rate_max", "onpo/residual_rms", "reward"):
        assert all(key in r for r in rows), key
    assert 0 <= rows[0]["onpo/win_rate_min"] <= 0.5 <= rows[0]["onpo/win_rate_max"] <= 1
    assert json.loads((out / "run_complete.json").read_text())["reference"] == "secondary-copy"


def test_onpo_lora_keeps_a_copy_of_the_adapter(tiny_model_dir, tmp_path):
    """LoRA: the secondary iterate is a copy of the adapter weights, swapped into the policy for the reference pass
    and back bit for bit; synced to ½(θ̂ + θ) exactly; checkpointed under reference/ in method.safetensors."""
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", objective="onpo", max_steps=2,
               save_steps=1, lora=True, lora_r=4, memory_probe=False)
    eng = build(cfg, log=lambda *a: None)
    log = _onpo_spies(eng)
    out = eng.train()
    ref = eng.method.reference
    assert ref.kind == "secondary-adapter" and ref.model is None
    assert all(synced for _, _, synced in log["syncs"]) and len(log["syncs"]) == 2
    assert _h_zero(log, 0) is True and _h_zero(log, 1) is False
    assert all(p.requires_grad for p in ref.policy_params) and len(ref.params) == len(ref.policy_params) > 0
    saved = load_file(str(out / "checkpoints" / "step-1" / "method.safetensors"))
    names = {k[len("reference/"):] for k in saved if k.startswith("reference/")}
    assert names == set(ref.names) and all("lora" in n for n in names)
    assert (out / "adapter_model.safetensors").exists()


def test_onpo_is_no_longer_refused_and_its_reference_must_be_live(tiny_model_dir, tmp_path, capsys):
    from prefalign.cli import main

    assert not base.get_class("onpo").not_trainable
    cfg = _cfg(tiny_model_dir, _prompts(tmp_path / "p.jsonl"), tmp_path / "o", objective="onpo", reference="none")
    save(cfg, tmp_path / "c.yaml")
    assert main(["train", "--config", str(tmp_path / "c.yaml")]) == 2
    assert "secondary iterate needs a live reference" in capsys.readouterr().err.strip().splitlines()[-1]


# -- kill -9 + --resume -------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("algo,mu,fault,extra", [
    ("sea", 2, "after_step:4", {"beta": 0.1, "reward": SPREAD,
                                "objective_args": {"num_ensemble": 6, "rm_hidden_dim": 16}}),
    ("onpo", 1, "after_step:3", {}),
])
def test_kill9_then_resume_is_bit_identical(tiny_model_dir, tmp_path, algo, mu, fault, extra):
    """kill -9 after an optimizer step and --resume: the weights of the straight run, bit for bit. SEA (μ = 2):
    killed after step 4, resumed from step 3 — between the two updates of rollout 1 (its buffer and the ensemble as
    that rollout left it come back), then rollout 2 picks its duels with the restored ensemble (weights, Adam moments,
    replay buffer). ONPO: resumed from step 2, the secondary iterate as synced after step 2."""
    data = _prompts(tmp_path / "p.jsonl")
    for name in ("straight", "broken"):
        cfg = _cfg(tiny_model_dir, data, tmp_path / name, objective=algo, max_steps=6, save_steps=1,
                   num_iterations=mu, memory_probe=False, **extra)
        save(cfg, tmp_path / f"{name}.yaml")
    assert _cli(tmp_path / "straight.yaml").returncode == 0
    p = _cli(tmp_path / "broken.yaml", env={"PREFALIGN_FAULT": fault})
    assert p.returncode == -9, p.stderr[-2000:]
    p = _cli(tmp_path / "broken.yaml", "--resume")
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = _weights(tmp_path / "straight"), _weights(tmp_path / "broken")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # and the state itself: the last checkpoint's method tensors (written after the resume) match the straight run's
    last = sorted((tmp_path / "broken" / "checkpoints").glob("step-*"))[-1].name
    mine, theirs = (load_file(str(tmp_path / n / "checkpoints" / last / "method.safetensors"))
                    for n in ("broken", "straight"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert any(k.startswith("algorithm/won" if algo == "sea" else "reference/") for k in mine)
