"""Evaluate with a LAVIS run config: ``python -m lavis_goal.evaluate --cfg-path CFG [--options k=v ...]``.

Evaluates ``run.test_splits`` with the weights the model config names
(``model.finetuned`` for a checkpoint of this project) and writes
``result/<split>_best.json`` and ``summary.md`` to a new output folder.
"""

import sys

from lavis_goal.cli import build_run, parse_args


def main(argv=None):
    args = parse_args("Evaluate a model on retrieval splits through LAVIS.", argv)
    _, runner = build_run(args, evaluate_only=True)
    try:
        logs = runner.evaluate(cur_epoch="best", skip_reload=True)
        runner.write_summary(logs, 0)
        return logs
    finally:
        from lavis_goal.common import dist as goal_dist

        goal_dist.destroy()


if __name__ == "__main__":
    main(sys.argv[1:])
