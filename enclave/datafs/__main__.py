"""``python -m enclave.datafs``: see :mod:`enclave.datafs.daemon`."""

import sys

from enclave.datafs.daemon import main

sys.exit(main())
