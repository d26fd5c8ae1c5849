"""eldistill: reproduction suite for "Efficient Diffusion Distillation via Embedding Loss" (arXiv 2604.22379)."""

__version__ = "0.1.0"
