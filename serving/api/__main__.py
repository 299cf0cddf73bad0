"""``python -m serving.api ...`` = ``mri-api ...`` (see :mod:`serving.api.cli`)."""

from serving.api.cli import main

main()
