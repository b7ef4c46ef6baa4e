//! Routes: which `[[route]]` a request belongs to ([`pattern`]), the bounded label of a path no
//! route matched ([`label`]), and the table of route entries the proxy serves and counts by
//! ([`table`]) — configured routes in file order, then automatic labels, capped.

pub mod label;
pub mod pattern;
pub mod table;

pub use label::template_label;
pub use pattern::{Pattern, PatternError};
pub use table::{RouteEntry, RouteSettings, RouteSpec, RouteTable};
