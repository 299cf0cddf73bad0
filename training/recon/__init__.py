"""Federated unrolled MRI reconstruction (Lei et al. generators and critics, FL-MR FedAvg)."""
