//! Sliding replay window (STUB, in progress).
