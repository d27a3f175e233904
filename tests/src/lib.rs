//! Warren's NAT lab: real NATs built from network namespaces, veth pairs and nftables on one
//! machine, running the real `warren` and `warren-coordinator` binaries (DESIGN.md section 4).
//!
//! Test layer, the top of the pyramid: the deterministic simulations live in `warren-proto`;
//! this is where the product meets a real kernel. Needs root; without it every lab test fails
//! with a message saying so (never skips).
//!
//! ```no_run
//! use warren_lab::{Lab, SiteKind};
//! Lab::run_test("example", |lab| {
//!     let c = lab.start_coordinator()?;
//!     let site = lab.add_site(SiteKind::Eim)?;
//!     let token = lab.invite(&c, &[])?;
//!     let node = lab.join(&site.hosts[0], &token, "a", None)?;
//!     lab.wait_node_ready(&node)?;
//!     Ok(())
//! });
//! ```

pub mod bins;
pub mod cmd;
pub mod iperf;
pub mod lab;
pub mod names;
pub mod nat;
pub mod netns;
pub mod process;
pub mod report;
pub mod warren;

pub use lab::{Host, Lab, Site, COORDINATOR_IP, SPARE_IP};
pub use nat::SiteKind;
pub use warren::{Coordinator, Node, PeerStatus};
