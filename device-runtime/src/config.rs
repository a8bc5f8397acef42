//! Device configuration (being written).
