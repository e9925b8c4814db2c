"""Stands for modules/sd_unet.py of v1.10.1: no alternative UNet (TensorRT etc.) unless a test sets one."""
current_unet = None
