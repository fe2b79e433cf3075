"""ViT Studio: fine-tune timm Vision Transformers on a small image dataset, explain, and share them."""
__version__ = "0.1.0"
