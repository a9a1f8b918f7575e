"""``python -m drqa_plugin.cli`` is ``drqa``."""

import sys

from drqa_plugin.cli import main

sys.exit(main())
