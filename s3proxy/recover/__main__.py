"""``python -m s3proxy.recover``: the ``s3proxy decrypt`` command on its own."""

import sys

from s3proxy.recover.command import main

if __name__ == "__main__":
    sys.exit(main())
