"""Train a small GPT on the embedded Shakespeare corpus (the main job, as a script).

    python examples/train_shakespeare.py                       # BPE tokenizer (the default)
    python examples/train_shakespeare.py --tokenizer char      # character-level, for comparison
    python examples/train_shakespeare.py --max_steps 200       # any config key can be overridden

Same as `minillm train`; see examples/configs/ for the TOML equivalents.
"""
import sys

from minillm.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
