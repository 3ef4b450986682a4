//! The admin interface: a RESP port that drives a [`Simulator`](super::Simulator).
