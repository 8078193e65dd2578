"""Boards: a RISC-V SoC tile around the ivshmem devices, its C firmware and board tops."""
