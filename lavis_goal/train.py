"""Train with a LAVIS run config: ``python -m lavis_goal.train --cfg-path CFG [--options k=v ...]``.

LAVIS 1.0.2's wheel ships no train module; this one takes the same flags and
also runs on CPU, in one process or under ``torchrun`` with gloo.
"""

import sys

from lavis_goal.cli import build_run, parse_args


def main(argv=None):
    args = parse_args("Fine-tune a model with GOAL through LAVIS.", argv)
    _, runner = build_run(args)
    try:
        return runner.train()
    finally:
        from lavis_goal.common import dist as goal_dist

        goal_dist.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
