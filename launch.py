#!/usr/bin/env python
"""Start the web UI: ``python launch.py --help`` (the code is playground/launch.py; installed, ``playground``)."""
import sys

from playground.launch import AUTH_HINT, main  # noqa: F401 - AUTH_HINT: the tests read the refusal text here

if __name__ == "__main__":
    sys.exit(main())
