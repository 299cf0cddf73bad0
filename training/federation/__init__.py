"""One federation layer (Flower message API) for both model families.

A *family* (:class:`training.federation.family.Family`) knows how to train and evaluate its models on
one site's data; this package moves the shared weights between sites and the coordinator with Flower:

* :mod:`.apps` — the ``ClientApp`` (one per hospital) and ``ServerApp`` (the coordinator);
* :mod:`.strategy` — FedAvg weighted by number of examples, with per-site metrics, checkpoints, resume
  and a check that a site's reply carries nothing but the shared (generator) arrays;
* :mod:`.simulation` — run all sites on one machine with Flower's simulation engine.

What stays at a site (critics, discriminators, optimiser state, privacy accountants) lives in the
node's ``Context.state`` and in a site-local state directory; it is never put into a message.
"""
