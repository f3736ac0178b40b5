"""``python -m chatctl``."""

from chatctl.cli import main

if __name__ == "__main__":
    main()
