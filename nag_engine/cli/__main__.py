"""`python -m nag_engine.cli`: the `nag-engine` command."""

from . import main

if __name__ == "__main__":
    raise SystemExit(main())
