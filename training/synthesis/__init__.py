"""Federated cross-modality synthesis (FedMed-GAN): CycleGAN generators shared by FedAvg, PatchGAN
discriminators kept at each site, DP-SGD (Opacus) on the generators with one accountant per site."""
