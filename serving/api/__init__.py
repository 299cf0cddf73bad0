"""REST API in front of Triton: validates, converts, calls Triton through :mod:`serving.client`, formats.

No inference and no MRI math happen here (and torch is never imported): requests are parsed into
arrays (:mod:`serving.api.inputs`), sent to Triton (:mod:`serving.api.inference`), and the answer is
written as ``.npy``, NIfTI, PNG or a DICOM series (:mod:`serving.api.outputs`). Large volumes go through
job mode (:mod:`serving.api.jobs`).

    from serving.api import ApiSettings, create_app
    app = create_app(ApiSettings.load(Path("configs/serving.yaml")))

or from the shell: ``mri-api serve --config configs/serving.yaml`` (see ``docs/api.md``).
"""

from serving.api.app import create_app
from serving.api.settings import ApiSettings

__all__ = ["ApiSettings", "create_app"]
