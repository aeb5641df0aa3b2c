"""HDR (Fushishita et al. 2021): hierarchical disentangled latents for video prediction.

Only the paper's abstract is public: it fixes two-stage training, a background plus
foreground objects, and time-independent versus time-varying information per object.
The architecture details follow this project's design (../shared/docs/hdr-design.md);
the paper's are not public.

  encoder.py         per-frame CNN with a position embedding
  slot_attention.py  slot attention and the slot predictor between frames (SAVi-style)
  latents.py         Gaussian posteriors, KL terms, pooling of the time-independent part
  decoder.py         object and background renderers, alpha compositing
  autoencoder.py     stage 1: frames -> (static, dynamic) latents per slot -> frames
"""
