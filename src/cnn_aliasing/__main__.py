"""``python -m cnn_aliasing``: the ``cnn-aliasing`` command."""

from cnn_aliasing.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
