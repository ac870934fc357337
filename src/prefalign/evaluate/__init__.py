"""Evaluation: a policy against its reference by sampling — reward, win rate, KL, best-of-n, report files.

    from prefalign.evaluate import EvalConfig, evaluate, write_report
    metrics = evaluate(policy, tokenizer, prompts, load_reward("vader"), EvalConfig(n_reference=16),
                       reference_context=policy.disable_adapter)      # a LoRA policy is its own reference
    write_report("eval-out", metrics)                                    # metrics.json, report.md, frontier.png
"""

from prefalign.evaluate.logprobs import completion_logprobs
from prefalign.evaluate.metrics import best_of_n_curve, best_of_n_expected, compare, mean_se, win_rate
from prefalign.evaluate.report import markdown_table, plot_frontier, summary_rows, write_report
from prefalign.evaluate.run import (
                                    EvalConfig,
                                    assemble,
                                    evaluate,
                                    evaluate_policy,
                                    load_policy_and_reference,
                                    reference_metrics,
                                    reference_samples,
)

__all__ = ["EvalConfig", "assemble", "best_of_n_curve", "best_of_n_expected", "compare", "completion_logprobs",
           "evaluate", "evaluate_policy", "load_policy_and_reference", "markdown_table", "mean_se",
           "plot_frontier", "reference_metrics", "reference_samples", "summary_rows", "win_rate",
           "write_report"]
