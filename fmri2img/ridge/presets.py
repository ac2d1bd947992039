"""Brain-Diffuser regression constants (REFERENCE.md §3), exported as named presets."""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "BRAIN_DIFFUSER_ALPHAS",
    "ALPHA_VDVAE",
    "ALPHA_CLIP_TEXT",
    "ALPHA_CLIP_VISION",
    "FMRI_SCALE",
    "VDVAE_REDUCED_COLUMNS",
]

#: Ridge alpha for the VDVAE latents (one multi-output fit, 91,168 columns).
ALPHA_VDVAE: float = 50_000.0
#: Ridge alpha for CLIP-text (77 tokens × 768).
ALPHA_CLIP_TEXT: float = 100_000.0
#: Ridge alpha for CLIP-vision (257 tokens × 768).
ALPHA_CLIP_VISION: float = 60_000.0

#: Feature name → Brain-Diffuser alpha (read-only).
BRAIN_DIFFUSER_ALPHAS = MappingProxyType(
    {"vdvae": ALPHA_VDVAE, "clip_text": ALPHA_CLIP_TEXT, "clip_vision": ALPHA_CLIP_VISION}
)

#: NSD betas are stored as % signal change × 300; Brain-Diffuser divides by this first.
FMRI_SCALE: float = 300.0

#: Width of the seed paper's reduced VDVAE target (first 10 blocks): 2·16 + 4·256 + 4·1024.
VDVAE_REDUCED_COLUMNS: int = 5152
