//! Frames to and from mp4 (H.264), gif, png and safetensors.
