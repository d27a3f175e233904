//! Data-plane packet formats (STUB, in progress).
