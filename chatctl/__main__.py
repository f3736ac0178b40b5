"""``python -m chatctl``."""

from chatctl.cli.main import main

if __name__ == "__main__":
    main()
