//! The alert journal (being written).
