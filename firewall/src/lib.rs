//! burrow-firewall: the egress policy, encrypted DNS and the guarded dialer (not built yet).
#![forbid(unsafe_code)]
