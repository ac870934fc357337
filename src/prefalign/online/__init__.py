"""Online RL: sample → score → update, as a method of the training engine (``train/engine.py``).

- ``rollout.py``: G completions per prompt from the current policy, the prompt prefilled once per group;
- ``rewards.py``: the rewards of a rollout (any reward spec of prefalign, verifiable rewards, weights, None);
- ``algos/``: the algorithms (GRPO and its variants, RLOO, REINFORCE++, PPO, online DPO, f-DPG, …), each a pure
  function of log-probs, rewards, advantages and masks, registered by name;
- ``aggregate.py``: loss normalisers that count tokens or sequences over the *global* batch;
- ``method.py``: the engine method that ties them together.
"""
