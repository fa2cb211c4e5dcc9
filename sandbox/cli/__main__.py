"""``python -m sandbox.cli``: the `sandbox` command without its console script."""

from . import main

if __name__ == "__main__":
    main()
