//! Warren NAT lab harness (in progress).
