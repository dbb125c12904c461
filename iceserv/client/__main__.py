"""``python -m iceserv.client ARGS``: run the compiler wrapper as ``icecc ARGS``."""

import sys

from iceserv.client.main import main

sys.exit(main(["icecc", *sys.argv[1:]]))
