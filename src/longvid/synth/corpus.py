"""The tiny tokenizer's training text: every synthetic task's questions, options and reasoning,
so their words are single tokens.

`python -m longvid.synth.corpus --write-tokenizer` rebuilds the tokenizer shipped in
`longvid/model/tiny_tokenizer/`; model/ itself never imports the tasks.
"""

from __future__ import annotations

import argparse
import logging

from ..inputs import question_text, target_text
from ..model.tiny import TOKENIZER_DIR, build_tokenizer
from .tasks import ALL_TASKS, make_sample

log = logging.getLogger(__name__)


def tokenizer_corpus(per_task: int = 200) -> list[str]:
    """The prompt and target text of `per_task` samples of every task, exactly as models see them."""
    lines = []
    for task in ALL_TASKS:
        for seed in range(per_task):
            sample, _ = make_sample(task, seed, 16, 56)
            lines += [question_text(sample), target_text(sample)]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write-tokenizer", action="store_true", help=f"rebuild {TOKENIZER_DIR}")
    args = parser.parse_args()
    if args.write_tokenizer:
        logging.basicConfig(level=logging.INFO)
        build_tokenizer(tokenizer_corpus()).save_pretrained(str(TOKENIZER_DIR))
        log.info("wrote %s", TOKENIZER_DIR)


if __name__ == "__main__":
    main()
