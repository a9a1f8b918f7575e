"""Train with BasicSR's own ``train_pipeline`` and DR-IQA available in the option file.

    python -m drqa_plugin.integrations.basicsr.train -opt options/train_sr_driqa.yml [--import MODULE]

All BasicSR flags pass through (``--launcher pytorch`` for distributed runs,
``--auto_resume``, ``--debug``, ``--force_yml``). Experiments go to ./experiments.
"""

from __future__ import annotations

from collections.abc import Sequence

from drqa_plugin.integrations.basicsr.launcher import run


def main(argv: Sequence[str] | None = None) -> None:
    from drqa_plugin.integrations.basicsr._compat import import_basicsr

    import_basicsr()
    from basicsr.train import train_pipeline

    run(train_pipeline, argv, is_train=True)


if __name__ == "__main__":
    main()
