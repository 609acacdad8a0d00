"""``python -m eunets_monai.infer``: the ``eunets-infer`` command (see :py:mod:`eunets_monai.inference.cli`)."""

import sys

from eunets_monai.inference.cli import main

if __name__ == "__main__":
    sys.exit(main())
