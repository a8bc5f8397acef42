//! A/B bundle slots (being written).
