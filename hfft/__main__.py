"""``python -m hfft`` entry point."""

from hfft.cli import main

if __name__ == "__main__":
    main()
