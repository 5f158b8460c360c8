//! 3D convolutions: see the vae branch.
