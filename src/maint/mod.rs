//! Maintenance notifications: the typed notifications a managed Redis
//! (Redis Enterprise / Redis Cloud) pushes around maintenance, their parser
//! and de-duplication, and the maintenance configuration (defaults,
//! validation, handoff autoscaling, endpoint-type detection).
//!
//! ```
//! use redis_layers::maint::{Kind, MaintenanceConfig, Notification};
//! use redis_layers::Value;
//!
//! let push = Value::Push(vec![Value::BulkString("MIGRATING".into()), Value::Integer(17), Value::Integer(5)]);
//! let n = Notification::parse(&push).unwrap().unwrap();
//! assert!(n.kind().is_start());
//! let cfg = MaintenanceConfig::default().validate().unwrap();
//! assert_eq!(cfg.workers(100), 33);
//! ```

mod config;
mod notification;
mod stale;
mod state;
mod tower_impls;

pub use config::{
    is_internal_ip, resolve_endpoint_type, ConfigError, EndpointType, MaintenanceConfig, Mode,
    Resolved, ResolvedEndpointType,
};
pub use notification::{
    Dedup, Kind, MovingEndpoint, Notification, ParseError, SlotMove, SlotSet,
    MAX_NOTIFICATION_TIME, SLOT_COUNT,
};
pub use stale::StaleGuard;
pub use state::{
    BreakerState, LastNotification, MaintEvent, MaintStatus, Maintained, MaintenanceState, OptIn,
    Verdict, NOTIFICATIONS, RELAXED,
};
pub use tower_impls::{
    CarryMaintenanceLayer, MaintenanceHandle, WithMaintenance, WithMaintenanceLayer,
};
