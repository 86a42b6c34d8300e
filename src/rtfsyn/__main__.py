"""``python -m rtfsyn`` runs the command-line interface."""

from rtfsyn.cli import main

if __name__ == "__main__":
    main()
