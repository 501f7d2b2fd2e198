//! glm5-kernels
