"""Neural-network architectures (U-Net family) and model weights I/O."""
