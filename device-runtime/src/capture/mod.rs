//! Frame sources (being written).
