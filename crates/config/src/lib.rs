//! Typed configuration for every Lakebed service.
//!
//! One TOML file (`lakebed.toml`) plus `LAKEBED_*` environment overrides (`__` separates
//! levels: `LAKEBED_COMPUTE__OS_USER=postgres` sets `compute.os_user`). Every key has a
//! default, so `lakebed up` works with no file at all.
//!
//! Errors name the source, the key and the reason, for example
//! `lakebed.toml: endpoints.main.suspend_timeout: "5 parsecs" is not a duration`.
//!
//! Why figment: it merges defaults, a TOML file and environment variables into one serde
//! value and keeps, for every value, where it came from, which is exactly what an error
//! message that names the file and key needs. Durations are parsed with `humantime`, time
//! zones come from `chrono-tz` (the IANA database compiled in, so a window means the same
//! on every host).

mod duration;
mod load;
mod names;
mod policy;
mod pool;

pub use duration::{DurationError, HumanDuration, MAX_DURATION, SuspendTimeout, parse_duration};
pub use load::{
    ComputeConfig, Config, ConfigError, EndpointConfig, KeysConfig, KmsProviderKind, LogConfig,
    LogFormat, MAX_WARM_POOL, ManagerConfig, PageServerConfig, PortRange, ProxyConfig,
};
pub use names::{EndpointName, NameError, RoleName, TenantName};
pub use policy::{AutosuspendPolicy, KeepWarmWindow, WindowError};
pub use pool::{PoolConfig, PoolMode, Timeout};
