"""``prefalign demo``: align SmolLM2-135M-Instruct towards positive sentiment on a CPU, offline, in minutes.

    from prefalign.demo import DemoConfig, run_demo
    run_demo(DemoConfig(out="outputs/demo"))
"""

from prefalign.demo.model import smollm2_folder
from prefalign.demo.prompts import all_prompts, split_prompts
from prefalign.demo.run import DemoConfig, quick_config, run_demo

__all__ = ["DemoConfig", "all_prompts", "quick_config", "run_demo", "smollm2_folder", "split_prompts"]
