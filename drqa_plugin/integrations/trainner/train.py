"""Train with traiNNer-redux's own ``train_pipeline`` and DR-IQA available in the option file.

    python -m drqa_plugin.integrations.trainner.train --trainner ~/traiNNer-redux -opt options/train_sr_driqa.yml

``--trainner PATH`` (or ``$TRAINNER_REDUX_DIR``) names the traiNNer-redux clone; every
other flag (``--auto_resume``, ``--launcher pytorch``, ``--resume``, ...) goes to
traiNNer-redux unchanged. Experiments go to ./experiments, as with its ``train.py``
run from the clone. traiNNer-redux's training pipeline needs CUDA (it says so and
stops on a machine without it).
"""

from __future__ import annotations

from drqa_plugin.integrations.trainner.launcher import main

if __name__ == "__main__":
    main()
