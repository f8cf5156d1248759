//! mesh-ingress.
