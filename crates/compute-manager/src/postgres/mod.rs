//! Everything that touches PostgreSQL itself: its binaries, the OS user it runs as, the data
//! directory files Lakebed owns, the postmaster process, and the SQL the manager runs on it.

mod datadir;
mod install;
mod os_user;
mod process;
pub mod sql;

pub use datadir::EndpointDir;
pub(crate) use datadir::{initdb, remove_dir_if_exists, tail_lines};
pub use install::PgInstall;
pub use os_user::OsUser;
pub use process::{
    Postmaster, StartError, kill_postgres_in, postgres_processes_in, processes_where,
};

/// The superuser role through which the manager administers a compute. It can log in only
/// over the compute's private Unix socket, by peer authentication mapped from the manager's
/// own OS user (see [`datadir`]); it has no password.
pub const SYSTEM_ROLE: &str = "lakebed_system";

/// The group role every catalog role is a member of; it holds the grants a database owner
/// expects (CREATE on `public` in the `postgres` database).
pub const USERS_ROLE: &str = "lakebed_users";
