//! A stand-in Kubernetes API server for tests (being written).
