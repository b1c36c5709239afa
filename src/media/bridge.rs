//! Bridging two call legs.
