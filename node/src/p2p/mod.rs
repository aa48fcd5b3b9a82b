//! The node's libp2p side: the transport over the camouflaged carriers,
//! the swarm, the messaging protocol and the task that drives them.
pub mod driver;
pub mod msgstream;
pub mod proto;
pub mod secure;
pub mod swarm;
pub mod transport;
