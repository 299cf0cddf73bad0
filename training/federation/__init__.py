"""One federation layer (Flower message API) for both model families.

A *family* (:class:`training.federation.family.Family`) knows how to train and evaluate its models on
one site's data; this package moves the shared weights between sites and the coordinator with Flower:

* :mod:`.apps` — the ``ClientApp`` (one per hospital) and ``ServerApp`` (the coordinator);
* :mod:`.strategy` — FedAvg weighted by number of examples, with per-site metrics, checkpoints, resume
  and a check that a site's reply carries nothing but the shared (generator) arrays;
* :mod:`.simulation` — run all sites on one machine with Flower's simulation engine;
* :mod:`.sequential` — the same FedAvg rounds with the sites in turn in one process (no Ray);
* :mod:`.gradient_average` — Isik et al.'s mode: the centre averages the sites' generator gradients every
  ``sync_every`` batches and takes one optimiser step (in-process); :mod:`.gradient_flower` — the same
  through Flower (deployment, simulation), one Flower round per synchronisation;
* :mod:`.rundir` — a run directory: same configuration or none, resume, each round's record;
* :mod:`.compression` (pure numpy) and :mod:`.payload` — float16 / top-k with error feedback of what a site
  sends, its wire bytes and their count (``bytes_sent`` in the metrics).

What stays at a site (critics, discriminators, optimiser state, privacy accountants) lives in the
node's ``Context.state`` and in a site-local state directory; it is never put into a message.
"""
