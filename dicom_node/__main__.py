"""``python -m dicom_node``: see :mod:`dicom_node.cli`."""

from dicom_node.cli import app

app(prog_name="dicom-node")
