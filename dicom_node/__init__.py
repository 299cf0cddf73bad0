"""DICOM node: storage SCP (pynetdicom), series assembly, durable SQLite job queue, workers, delivery.

Modules: :mod:`~dicom_node.config` (YAML/TOML -> dataclasses), :mod:`~dicom_node.scp` (associations and
C-STORE into the spool), :mod:`~dicom_node.queue` (job states, durable writes), :mod:`~dicom_node.processing`
(the processor: decode, infer via ``serving.client``, build the derived series),
:mod:`~dicom_node.delivery` (C-STORE SCU), :mod:`~dicom_node.node` (the threads), :mod:`~dicom_node.audit`
(hashed UIDs, audit lines), :mod:`~dicom_node.cli` (``python -m dicom_node``). Shared DICOM building lives in
:mod:`serving.dicom`. Documentation: ``docs/dicom_node.md``.
"""
