"""`python -m ml_playground` runs the same Typer app as the `ml-playground` script."""

from ml_playground.cli.app import main

if __name__ == "__main__":
    main()
