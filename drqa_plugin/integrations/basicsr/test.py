"""Validate existing checkpoints with BasicSR's own ``test_pipeline`` (GT-less sets included).

    python -m drqa_plugin.integrations.basicsr.test -opt options/test_driqa_no_gt.yml

Results (logs, and images when ``val.save_img``) go to ./results/<name>.
"""

from __future__ import annotations

from collections.abc import Sequence

from drqa_plugin.integrations.basicsr.launcher import run


def main(argv: Sequence[str] | None = None) -> None:
    from drqa_plugin.integrations.basicsr._compat import import_basicsr

    import_basicsr()
    from basicsr.test import test_pipeline

    run(test_pipeline, argv, is_train=False)


if __name__ == "__main__":
    main()
